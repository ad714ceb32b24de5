"""Judge arguments, read and checked the same way for every benchmark: one ``k=v`` parser, one secret rule,
one set of value checks, one check of OpenAI-compatible arguments.

Both benchmarks take ``judge_args`` in lm-eval's ``model_args`` syntax, so a value is typed as the harness
types it (lm-eval's own parser); a name that looks like a credential is never written anywhere, and a
credential given as an argument is refused with where it must come from instead (the environment).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from esc_guard_tasks.judges.openai_chat import ADAPTER_FIELD, API_KEY_ENV, OPENAI_ARGS

# Argument names whose values must never reach results files or logs.
SECRET_ARG_MARKERS = ("key", "token", "secret", "password")

# A check returns the value (converted where the k=v parser left a string) or raises ValueError(what it accepts).
Check = Callable[[Any], Any]


def parse_kv(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``a=1,b=x`` (lm-eval's model_args syntax, typed by lm-eval's own parser) or a mapping → dict."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(value)


def parse_pairs(value: str | Mapping[str, Any] | None, what: str = "") -> dict[str, Any]:
    """:func:`parse_kv` for settings: a name without a value (``a,b=1`` or ``a=``) is an error naming ``what``
    and the name, not an empty string passed on."""
    pairs = parse_kv(value)
    bare = [k for k, v in pairs.items() if v == ""]
    if bare and not isinstance(value, Mapping):
        raise ValueError(f"{what} must be k=v,k=v: {', '.join(bare)} has no value".lstrip())
    return pairs


def is_secret(name: str) -> bool:
    return any(marker in name.lower() for marker in SECRET_ARG_MARKERS)


def public_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Drop secret-looking arguments before anything is written to results."""
    return {k: v for k, v in args.items() if not is_secret(k)}


def reject_unknown(args: Collection[str], accepted: Collection[str], who: str) -> None:
    """Every argument name must be one ``who`` accepts; a credential-looking one is told where keys come from."""
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        hint = ""
        if any(is_secret(name) for name in unknown):
            hint = f"; an API key is read only from the environment ({' or '.join(API_KEY_ENV)})"
        raise ValueError(f"unknown judge_args for {who}: {', '.join(unknown)} (accepted: {', '.join(accepted)}){hint}")


# -- value checks ---------------------------------------------------------------------------------------------


def integer(low: int | None = None) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueError("must be an integer" + (f" >= {low}" if low is not None else ""))
        if low is not None and value < low:
            raise ValueError(f"must be at least {low}")
        return value

    return check


def number(low: float = 0.0, high: float | None = None, *, open_low: bool = False) -> Check:
    bounds = f"{'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number {bounds}")
        if value < low or (open_low and value == low) or (high is not None and value > high) or value != value:
            raise ValueError(f"must be a number {bounds}")
        return value

    return check


def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return check


def text(value: Any) -> str:
    if isinstance(value, (dict, list)) or value in (None, ""):
        raise ValueError("must be a non-empty string")
    return str(value)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def checked(values: Mapping[str, Any], checks: Mapping[str, Check], what: str) -> dict[str, Any]:
    """Each value of a known key through its check; the error names ``what`` and the key (a secret's value never)."""
    out = dict(values)
    for key, value in values.items():
        if key in checks and value is not None:  # None: "remove this default" where a caller allows it
            try:
                out[key] = checks[key](value)
            except ValueError as err:
                shown = "" if is_secret(key) else f" (got {value!r})"
                raise ValueError(f"{what} {key}: {err}{shown}") from None
    return out


# -- OpenAI-compatible judges ---------------------------------------------------------------------------------

_OPENAI_CHECKS: dict[str, Check] = {
    "base_url": text,
    "model": text,
    "num_concurrent": integer(1),
    "max_retries": integer(0),
    "timeout": number(0.0, open_low=True),
    "max_tokens": integer(1),
    "retry_backoff": number(0.0),
    "max_retry_wait": number(0.0),
}
OPENAI_CHECKS: dict[str, Check] = {name: _OPENAI_CHECKS[name] for name in OPENAI_ARGS}
EXAMPLE_URL = "http://localhost:8000/v1"


def openai_args(
    judge: str, args: Mapping[str, Any], *, per_adapter: bool, who: str, also: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The arguments of an ``OpenAIChatJudge``, checked: names (``also``: ones the caller took out first, listed as
    accepted), value types, ``base_url``, and ``model``: a ``{adapter}`` template for a judge with a served model
    per adapter (``per_adapter``, default ``{adapter}``), one named model otherwise."""
    reject_unknown(args, [*OPENAI_CHECKS, *also], who)
    out = checked(args, OPENAI_CHECKS, "judge_args")
    if per_adapter:
        out.setdefault("model", ADAPTER_FIELD)
    model = str(out.get("model") or "")
    if not out.get("base_url"):
        needs = "base_url=<server>" + ("" if per_adapter else " and model=<served model>")
        example = f"base_url={EXAMPLE_URL}" + ("" if per_adapter else ",model=gpt-4o")
        raise ValueError(f"judge={judge} needs judge_args {needs}, e.g. {example}")
    if per_adapter and ADAPTER_FIELD not in model:
        raise ValueError(
            f"judge={judge} needs a served model per adapter: judge_args model must contain {ADAPTER_FIELD}"
            f" (e.g. model={ADAPTER_FIELD}), got model={model}"
        )
    if not per_adapter and not model:
        raise ValueError(f"judge={judge} needs judge_args model=<served model name> (e.g. model=gpt-4o)")
    if not per_adapter and ADAPTER_FIELD in model:
        raise ValueError(f"judge={judge} asks one model for every dimension: model must not contain {ADAPTER_FIELD}")
    return out
