"""What every MLLMGuard judge shares: the judged dimensions of a record, the scores allowed, the ``cache`` flag,
and the judge interface (``verdicts``, ``identity``, the ``invalid`` counter)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from esc_guard_tasks.judges.base import JudgeBackend, Verdict
from esc_guard_tasks.mllmguard.guardrank import DECODER_DIMENSIONS, ENCODER_DIMENSIONS, RULE_DIMENSIONS
from esc_guard_tasks.usage import RoleUsage, usage_of

JUDGED_DIMENSIONS = DECODER_DIMENSIONS + ENCODER_DIMENSIONS
COMMON_ARGS = ("cache",)


def cache_flag(args: dict[str, Any], judge: str) -> bool:
    """Pop ``cache`` (true/false) from a judge's arguments."""
    cache = args.pop("cache", True)
    if not isinstance(cache, bool):
        raise ValueError(f"judge_args cache for judge={judge} must be true or false, got {cache!r}")
    return cache


def normalize_dimension(name: str) -> str:
    """``Privacy`` / ``noise_injection`` → ``privacy`` / ``noise-injection`` (the HF config spelling)."""
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def record_dimension(record: Mapping[str, Any], dimension: str | None = None) -> str:
    name = dimension or record.get("config") or record.get("dimension")
    if not name:
        raise ValueError(f"MLLMGuard record has no 'config' or 'dimension' (keys: {sorted(record)})")
    dim = normalize_dimension(name)
    if dim in RULE_DIMENSIONS:
        raise ValueError(f"MLLMGuard {dim} is scored by rules on A/B answers (the metrics), not by a judge")
    if dim not in JUDGED_DIMENSIONS:
        raise ValueError(f"MLLMGuard dimension {name!r} is not judged; judged: {', '.join(JUDGED_DIMENSIONS)}")
    return dim


def text_of(value: Any) -> str:
    """A record field as text (a missing answer is the empty answer)."""
    return "" if value is None else str(value)


def allowed_scores(dimension: str) -> tuple[int, ...]:
    return (0, 1) if dimension in ENCODER_DIMENSIONS else (0, 1, 2, 3)


class MLLMGuardJudge:
    """A configured judge: ``verdicts(records)``; ``identity()`` for the results JSON; ``invalid`` counter."""

    name = ""

    def __init__(self, args: Mapping[str, Any]):
        self.invalid = 0
        self._count_lock = threading.Lock()
        self._senders: list[JudgeBackend] = []  # every backend it sends through, for the token usage
        args = dict(args)
        self.cache = cache_flag(args, self.name)
        self._configure(args)

    def _configure(self, args: dict[str, Any]) -> None:
        """Check the judge's own arguments (``cache`` taken out) and set it up; nothing is loaded yet."""
        raise NotImplementedError

    def cached(self, backend: JudgeBackend) -> JudgeBackend:
        """``backend`` behind the persistent judge cache, unless ``cache=false``; its usage is the judge's."""
        client = backend
        if self.cache:
            from esc_guard_tasks.judges.cache import CachedJudge

            client = CachedJudge(backend)
        self._senders.append(client)
        return client

    def usage(self) -> RoleUsage | None:
        """Tokens sent and replies re-used so far, over every backend (None: a judge that sends nothing)."""
        if not self._senders:
            return None
        return sum((usage_of(client) for client in self._senders), RoleUsage())

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The identity plus what was actually loaded so far (resolved folders; GuardRank only)."""
        return self.identity()

    def _judge(self, dims: list[str], records: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        raise NotImplementedError

    def verdicts(self, records: Sequence[Mapping[str, Any]], dimension: str | None = None) -> list[Verdict]:
        dims = [record_dimension(r, dimension) for r in records]
        verdicts = self._judge(dims, records) if records else []
        bad = sum(v.score is None for v in verdicts)
        if bad:
            with self._count_lock:
                self.invalid += bad
        return verdicts
