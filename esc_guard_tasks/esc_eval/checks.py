"""Value checks for ESC-Eval settings: run when the settings are read, before any model loads.

Every check names the key and what it accepts, so ``judge_args`` ``batch_size=0`` fails at once with
``must be an integer >= 1`` instead of ``range() arg 3 must not be zero`` after all dialogues.
The judge backends accept only what is listed here (``judge_args_for`` is what ``judging`` hands the judge
registry), so the names and the checks cannot drift apart; the value checks themselves and the OpenAI-compatible
arguments' check are the judge layer's (:mod:`esc_guard_tasks.judges.args`), shared with MLLMGuard.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from esc_guard_tasks.judges.args import (
    Check,
    checked,
    choice,
    flag,
    integer,
    number,
    openai_args,
    reject_unknown,
    text,
)
from esc_guard_tasks.judges.hf_lora import SCORE_MODES
from esc_guard_tasks.judges.vllm_lora import ENGINE_ARGS

__all__ = ["Check", "checked", "choice", "flag", "integer", "judge_args_for", "number", "text"]


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


def judge_args_for(judge: str, backend: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """``judge_args`` of one judge and backend, checked: names, value types and ranges, required keys.

    The same function runs when the settings are read (before any model loads) and when the backend is
    built, so a run never gets past the settings with arguments the backend would refuse."""
    if backend == "openai":
        return openai_args(judge, args, per_adapter=judge == "esc_rank", who="the openai backend")
    accepted = {**WEIGHT_ARGS, **(HF_ARGS if backend == "hf" else VLLM_ARGS)}
    reject_unknown(args, accepted, f"the {backend} backend")
    args = checked(args, accepted, "judge_args")
    if judge != "esc_rank" and "pretrained" not in args:
        raise ValueError(f"judge=llm_rubric with judge_backend={backend} needs judge_args pretrained=<chat model>")
    return args
