"""ESC-RANK as a judge: its weights and its builders in the one judge registry.

ESC-RANK is ESC-Eval's trained judge: 14 LoRA adapters (one per dimension and language) on InternLM2-chat-7B.
Its builders live here, beside the weight resolution and conversion they call, so ESC-Eval's judging asks the
registry for a judge and never imports this package.
"""

from __future__ import annotations

from typing import Any

from esc_guard_tasks.esc_eval.judging import Weights, local_backend, served_backend
from esc_guard_tasks.judges.base import JudgeBackend

ESC_RANK_BASE = "internlm/internlm2-chat-7b"
ESC_RANK_ADAPTERS = "haidequanbu/ESC-RANK"
# The reference scorer (score.py) loads InternLM2 + ESC-RANK in float16; judge_args dtype=… overrides it.
ESC_RANK_DTYPE = "float16"


def weights(args: dict[str, Any]) -> Weights:
    """Pop the weight locations from ``args``: the base and the adapters, converted once if needed."""
    from esc_guard_tasks.esc_rank.checkpoints import resolve_esc_rank

    return resolve_esc_rank(
        args.pop("pretrained", ESC_RANK_BASE),
        args.pop("adapters", ESC_RANK_ADAPTERS),
        revision=args.pop("revision", None),
        adapters_revision=args.pop("adapters_revision", None),
    )


def hf_backend(args: dict[str, Any]) -> JudgeBackend:
    return local_backend("hf", "esc_rank", args, weights, ESC_RANK_DTYPE)


def vllm_backend(args: dict[str, Any]) -> JudgeBackend:
    """One vLLM engine holding the base and all 14 adapters (multi-LoRA)."""
    return local_backend("vllm", "esc_rank", args, weights, ESC_RANK_DTYPE)


def openai_backend(args: dict[str, Any]) -> JudgeBackend:
    """One served model per adapter (``model`` default ``{adapter}``, as ``vllm serve --lora-modules fluency_en=…``
    names them)."""
    return served_backend("esc_rank", args)
