"""Value checks for ESC-Eval settings: run when the settings are read, before any model loads.

Every check names the key and what it accepts, so ``judge_args`` ``batch_size=0`` fails at once with
``must be an integer >= 1`` instead of ``range() arg 3 must not be zero`` after all dialogues.
The judge backends accept only what is listed here (``judge_args_for`` is what ``judging.build_backend``
passes on), so the names and the checks cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from esc_guard_tasks.judges.hf_lora import SCORE_MODES
from esc_guard_tasks.judges.openai_chat import ADAPTER_FIELD, API_KEY_ENV, OPENAI_ARGS
from esc_guard_tasks.judges.vllm_lora import ENGINE_ARGS

# A check returns the value (converted where lm-eval's k=v parser left a string) or raises ValueError(what it accepts).
Check = Callable[[Any], Any]


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


def stop_strings(value: Any) -> Any:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise ValueError("must be a string or a list of strings")


# The supporter's and the role-player's decoding keys lm-eval reads itself; any other key goes to the backend.
GEN_KWARGS: dict[str, Check] = {
    "max_gen_toks": integer(1),
    "do_sample": flag,
    "temperature": number(0.0),
    "top_p": number(0.0, 1.0, open_low=True),
    "top_k": integer(-1),
    "repetition_penalty": number(0.0, open_low=True),
    "until": stop_strings,
}
DTYPES = ("auto", "float16", "bfloat16", "float32")
WEIGHT_ARGS: dict[str, Check] = {"pretrained": text, "adapters": text, "revision": text, "adapters_revision": text}
HF_ARGS: dict[str, Check] = {
    "dtype": choice(*DTYPES),
    "device": text,
    "batch_size": integer(1),
    "score_mode": choice(*SCORE_MODES),
    "max_new_tokens": integer(1),
}
_VLLM_CHECKS: dict[str, Check] = {
    "dtype": choice(*DTYPES),
    "max_model_len": integer(1),
    "gpu_memory_utilization": number(0.0, 1.0, open_low=True),
    "tensor_parallel_size": integer(1),
    "kv_cache_memory_bytes": integer(1),
    "enforce_eager": flag,
    "distributed_executor_backend": text,
    "max_num_seqs": integer(1),
    "max_num_batched_tokens": integer(1),
    "max_lora_rank": integer(1),
    "seed": integer(),
}
VLLM_ARGS: dict[str, Check] = {
    "score_mode": choice(*SCORE_MODES),
    "max_new_tokens": integer(1),
    **{name: _VLLM_CHECKS[name] for name in ENGINE_ARGS},
}
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


def checked(values: Mapping[str, Any], checks: Mapping[str, Check], what: str) -> dict[str, Any]:
    """Each value of a known key through its check; the error names ``what`` and the key."""
    out = dict(values)
    for key, value in values.items():
        if key in checks and value is not None:  # None: "remove this default" where a caller allows it
            try:
                out[key] = checks[key](value)
            except ValueError as err:
                shown = "" if _secret(key) else f" (got {value!r})"
                raise ValueError(f"{what} {key}: {err}{shown}") from None
    return out


def judge_args_for(judge: str, backend: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """``judge_args`` of one judge and backend, checked: names, value types and ranges, required keys.

    The same function runs when the settings are read (before any model loads) and when the backend is
    built, so a run never gets past the settings with arguments the backend would refuse."""
    if backend == "openai":
        accepted: dict[str, Check] = OPENAI_CHECKS
    else:
        accepted = {**WEIGHT_ARGS, **(HF_ARGS if backend == "hf" else VLLM_ARGS)}
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        hint = ""
        if any(_secret(name) for name in unknown):
            hint = f"; an API key is read only from the environment ({' or '.join(API_KEY_ENV)})"
        raise ValueError(
            f"unknown judge_args for the {backend} backend: {', '.join(unknown)}"
            f" (accepted: {', '.join(accepted)}){hint}"
        )
    args = checked(args, accepted, "judge_args")
    if backend == "openai":
        _check_openai(judge, args)
    elif judge != "esc_rank" and "pretrained" not in args:
        raise ValueError(f"judge=llm_rubric with judge_backend={backend} needs judge_args pretrained=<chat model>")
    return args


def _check_openai(judge: str, args: Mapping[str, Any]) -> None:
    """ESC-RANK: one served model per adapter (``model`` must contain ``{adapter}``, default ``{adapter}``);
    llm_rubric: one named model."""
    if not args.get("base_url"):
        raise ValueError(
            "judge_backend=openai needs judge_args base_url=<server>, e.g. base_url=http://localhost:8000/v1"
        )
    model = str(args.get("model", ADAPTER_FIELD if judge == "esc_rank" else ""))
    if judge == "esc_rank" and ADAPTER_FIELD not in model:
        raise ValueError(
            f"judge=esc_rank needs a served model per adapter: judge_args model must contain {ADAPTER_FIELD}"
            f" (e.g. model={ADAPTER_FIELD}), got model={model}"
        )
    if judge != "esc_rank" and not model:
        raise ValueError(
            "judge=llm_rubric with judge_backend=openai needs judge_args model=<served model name> (e.g. model=gpt-4o)"
        )
    if judge != "esc_rank" and ADAPTER_FIELD in model:
        raise ValueError(f"judge=llm_rubric asks one model for every dimension: model must not contain {ADAPTER_FIELD}")


def _secret(name: str) -> bool:
    from esc_guard_tasks.esc_eval.settings import SECRET_ARG_MARKERS

    return any(marker in name.lower() for marker in SECRET_ARG_MARKERS)
