"""Tokens a run actually sent and received, per role, and what they cost at the user's own prices.

Why: a user who puts an API model in a role (role-player, supporter or judge) needs to know what a run
cost, and what the next one will. Counts come from where they are exact: an OpenAI-compatible server's
``usage`` block, else the backend's own tokenizer (hf, vLLM). A request whose tokens cannot be told (an API
reply without ``usage``) is counted as ``unmeasured``, never as zero tokens; work not sent at all (judge
replies from the cache, turns resumed from the dialogue store) is counted apart as ``reused``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

ROLES = ("role_player", "supporter", "judge")
PRICE_UNIT = 1_000_000  # prices are per million tokens, as providers quote them


@dataclass(frozen=True)
class TokenCount:
    """One request's tokens: the prompt as sent and the completion as received."""

    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_usage_block(cls, body: Any) -> TokenCount | None:
        """An OpenAI-style reply's ``usage`` (``prompt_tokens``, ``completion_tokens``), or None when absent."""
        usage = body.get("usage") if isinstance(body, Mapping) else None
        if not isinstance(usage, Mapping):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)):
            return None
        return cls(prompt, completion)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RoleUsage:
    """One role's totals: tokens, requests sent, sent requests without a count, and work re-used unsent."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    unmeasured: int = 0
    reused: int = 0

    @classmethod
    def of(cls, counts: Iterable[TokenCount | None], reused: int = 0) -> RoleUsage:
        """The totals of sent requests' counts (None: sent, not measured)."""
        counts = list(counts)
        measured = [c for c in counts if c is not None]
        return cls(
            sum(c.prompt_tokens for c in measured),
            sum(c.completion_tokens for c in measured),
            len(counts),
            len(counts) - len(measured),
            reused,
        )

    def __add__(self, other: RoleUsage) -> RoleUsage:
        return RoleUsage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: RoleUsage) -> RoleUsage:
        return RoleUsage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoleUsage:
        return cls(**{f.name: int(data.get(f.name, 0)) for f in fields(cls)})


class UsageMeter:
    """A running total for one model, shared by the threads that call it."""

    def __init__(self) -> None:
        self._total = RoleUsage()
        self._lock = threading.Lock()

    def record(self, counts: Iterable[TokenCount | None]) -> None:
        self.add(RoleUsage.of(counts))

    def add(self, usage: RoleUsage) -> None:
        with self._lock:
            self._total = self._total + usage

    def total(self) -> RoleUsage:
        with self._lock:
            return self._total


def usage_of(model: Any) -> RoleUsage:
    """A judge's running totals so far: the ``tokens`` it sent and the replies it ``reused`` (the cache), looking
    through wrappers that hold a ``backend``."""
    total = RoleUsage()
    while model is not None:
        for name in ("tokens", "reused"):
            meter = getattr(model, name, None)
            if isinstance(meter, UsageMeter):
                total += meter.total()
        model = getattr(model, "backend", None)
    return total


def check_prices(value: Mapping[str, Any], roles: Iterable[str] = ROLES) -> dict[str, list[float]]:
    """``{role: [prompt, completion]}`` in price units per million tokens; ValueError names what is wrong."""
    roles = tuple(roles)
    checked: dict[str, list[float]] = {}
    for role, pair in value.items():
        if role not in roles:
            raise ValueError(f"prices: unknown role {role!r}; roles: {', '.join(roles)}")
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(p, int | float) and not isinstance(p, bool) and p >= 0 for p in pair)
        ):
            raise ValueError(
                f"prices: {role} must be [prompt price, completion price] per million tokens (numbers >= 0),"
                f" got {pair!r}"
            )
        checked[role] = [float(pair[0]), float(pair[1])]
    return checked


def costs(usage: Mapping[str, RoleUsage], prices: Mapping[str, list[float]]) -> dict[str, float]:
    """Estimated cost per priced role and their ``total`` (unmeasured requests are not in it)."""
    out = {
        role: (u.prompt_tokens * prices[role][0] + u.completion_tokens * prices[role][1]) / PRICE_UNIT
        for role, u in usage.items()
        if role in prices
    }
    if out:
        out["total"] = sum(out.values())
    return out


def usage_record(usage: Mapping[str, RoleUsage], prices: Mapping[str, list[float]]) -> dict[str, Any]:
    """What the results JSON holds: per role the totals, and the estimated cost when prices were given."""
    record: dict[str, Any] = {role: u.to_dict() for role, u in usage.items()}
    priced = costs(usage, prices)
    if priced:
        record["cost"] = priced | {"prices_per_million_tokens": dict(prices)}
    return record


def usage_line(task: str, record: Mapping[str, Any]) -> str:
    """One printable line: ``task: role-player 1,234 in / 56 out (3 requests) · … · cost 0.0123``."""
    parts = []
    for role in ROLES:
        if role not in record:
            continue
        u = RoleUsage.from_dict(record[role])
        text = f"{role.replace('_', '-')} {u.prompt_tokens:,} in / {u.completion_tokens:,} out ({u.requests:,} sent"
        if u.unmeasured:
            text += f", {u.unmeasured:,} unmeasured"
        if u.reused:
            text += f", {u.reused:,} {'cached' if role == 'judge' else 'resumed'}"
        parts.append(text + ")")
    cost = record.get("cost")
    if cost:
        parts.append(
            "est. cost "
            + ", ".join(f"{k.replace('_', '-')} {v:.4f}" for k, v in cost.items() if k in (*ROLES, "total"))
        )
    return f"{task}: tokens " + " · ".join(parts)


def recorded_usage(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Per task of a results file, the usage its metadata records (``configs.<task>.metadata.<benchmark>.usage``)."""
    found: dict[str, Mapping[str, Any]] = {}
    configs = results.get("configs") or {}
    for task in results.get("results") or {}:
        metadata = (configs.get(task) or {}).get("metadata") or {}
        for entry in metadata.values() if isinstance(metadata, Mapping) else ():
            if isinstance(entry, Mapping) and isinstance(entry.get("usage"), Mapping):
                found[task] = entry["usage"]
    return found


def usage_lines(results: Mapping[str, Any]) -> list[str]:
    """One printable line per task that records usage."""
    return [usage_line(task, record) for task, record in recorded_usage(results).items()]


def usage_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per task and role, for the report's table: the counts, and the estimated cost when priced."""
    rows = []
    for task, record in recorded_usage(results).items():
        cost = record.get("cost") or {}
        for role in ROLES:
            if role in record:
                row = {"task": task, "role": role} | RoleUsage.from_dict(record[role]).to_dict()
                rows.append(row | {"est. cost": cost.get(role)})
    return rows
