"""Which dialogue prompts lm-eval cuts to fit a model's context, measured exactly as lm-eval measures them.

lm-eval's ``hf`` and ``vllm`` backends fit a prompt into ``max_length - max_gen_toks`` tokens by cutting it
from the left (``HFLM.generate_until`` → ``tok_batch_encode(left_truncate_len=…)``; ``VLLM.generate_until`` →
``maybe_truncate``), with only a generic log line. In a dialogue that drops the system prompt (the role card,
the supporter's instructions) and the first turns. Nothing here changes what the harness does: each prompt is
encoded with the backend's own tokenizer call and compared with the same budget, so every turn can say whether
its prompt was cut. API backends do not expose their context budget: there the answer is "unknown" (None).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from esc_guard_tasks.esc_eval.protocol import Speaker, Transcript
from esc_guard_tasks.usage import TokenCount

log = logging.getLogger("lm_eval.esc_guard_tasks")
SPEAKER_NAMES: dict[Speaker, str] = {"supporter": "supporter (--model)", "seeker": "role-player"}


def _max_gen_toks(gen_kwargs: Mapping[str, Any], default: int) -> int:
    """The new-token budget lm-eval reserves for a request, read the way its backends read it."""
    try:
        from lm_eval.models.utils import normalize_gen_kwargs
    except ImportError:  # lm-eval before normalize_gen_kwargs: max_gen_toks or the model's default
        return int(gen_kwargs.get("max_gen_toks", default))
    return int(normalize_gen_kwargs(dict(gen_kwargs), default)["max_gen_toks"])


def _backend(lm: Any) -> str | None:
    """``hf`` or ``vllm`` when ``lm`` (unwrapped from ``--use_cache``'s CachingLM) is one of those classes."""
    from lm_eval.models.huggingface import HFLM

    if isinstance(lm, HFLM):
        return "hf"
    vllm_module = sys.modules.get("lm_eval.models.vllm_causallms")  # imported whenever a VLLM exists
    if vllm_module is not None and isinstance(lm, vllm_module.VLLM):
        return "vllm"
    return None


def unwrap(lm: Any) -> Any:
    from lm_eval.api.model import CachingLM

    return lm.lm if isinstance(lm, CachingLM) else lm


def context_budget(lm: Any, gen_kwargs: Mapping[str, Any]) -> int | None:
    """Prompt tokens the backend keeps (``max_length - max_gen_toks``; a seq2seq hf model: ``max_length``)."""
    lm = unwrap(lm)
    backend = _backend(lm)
    if backend is None:
        return None
    if backend == "hf" and getattr(lm, "backend", "causal") != "causal":
        return int(lm.max_length)
    return int(lm.max_length) - _max_gen_toks(gen_kwargs, lm.max_gen_toks)


def prompt_tokens(lm: Any, context: str) -> int:
    """The prompt's length as the backend encodes it before cutting (special tokens as it adds them)."""
    lm = unwrap(lm)
    if _backend(lm) == "hf":
        return int(lm.tok_batch_encode([context], truncation=False)[0].shape[1])
    return len(lm.tok_encode(context))


def truncated_prompts(lm: Any, contexts: Sequence[Any], gen_kwargs: Mapping[str, Any]) -> list[bool | None]:
    """Per context, whether the backend will cut it; None for every context when the backend cannot tell."""
    budget = context_budget(lm, gen_kwargs)
    if budget is None:
        return [None] * len(contexts)
    return [prompt_tokens(lm, context) > budget for context in contexts]


def tokenizer_counts(
    lm: Any, contexts: Sequence[Any], replies: Sequence[str], gen_kwargs: Mapping[str, Any]
) -> list[TokenCount | None]:
    """Per request, the tokens an hf/vLLM backend was sent (the prompt as encoded, cut to the budget) and the
    reply re-encoded by its tokenizer (a cut stop sequence and the end token are not in the reply); None for
    every request of a backend without a tokenizer here."""
    budget = context_budget(lm, gen_kwargs)
    tokenizer = getattr(unwrap(lm), "tokenizer", None)
    if budget is None or tokenizer is None:
        return [None] * len(contexts)
    return [
        TokenCount(
            min(prompt_tokens(lm, context), budget), len(tokenizer(reply, add_special_tokens=False)["input_ids"])
        )
        for context, reply in zip(contexts, replies, strict=True)
    ]


def report_truncation(transcripts: Sequence[Transcript], backends: Mapping[Speaker, str]) -> None:
    """One warning naming each speaker whose prompts were cut, how often, and the fix; and once per speaker
    whose backend cannot tell, that its turns are not counted."""
    cut: list[str] = []
    for speaker, name in SPEAKER_NAMES.items():
        flags = [t.prompt_truncated for tr in transcripts for t in tr.turns if t.speaker == speaker]
        if flags and all(flag is None for flag in flags):
            log.info(
                "ESC-Eval: the %s backend (%s) does not expose its context length, so whether its prompts were"
                " truncated cannot be told; truncated_turn_rate leaves its turns out",
                name,
                backends[speaker],
            )
        truncated = sum(flag is True for flag in flags)
        if truncated:
            dialogues = sum(any(t.prompt_truncated for t in tr.turns if t.speaker == speaker) for tr in transcripts)
            cut.append(f"{name}: {truncated} of {len(flags)} turns in {dialogues} of {len(transcripts)} dialogues")
    if cut:
        log.warning(
            "ESC-Eval: prompts longer than the model's context (max_length minus max_gen_toks) were cut from the left"
            " by lm-eval, losing the system prompt and the first turns — %s. Fix: a longer max_length"
            " (--model_args / role_model_args max_length=…), fewer rounds, or a smaller max_gen_toks"
            " (--gen_kwargs / role_gen_kwargs). The truncated_turn_rate row counts these turns.",
            "; ".join(cut),
        )
