"""Token-level rules every in-process judge backend must apply identically (hf and vLLM alike)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from esc_guard_tasks.judges.base import JudgeRequest


def prompt_ids(tokenizer: Any, request: JudgeRequest) -> list[int]:
    """Token ids of the request under the judge's own chat template, with BOS exactly once.

    Templates that start with ``{{ bos_token }}`` (InternLM2's) already render BOS as text,
    so the tokenizer must not add another.
    """
    text = tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def cut_at(text: str, stops: Sequence[str]) -> str:
    """The reply up to the first stop string (the reference cuts ESC-RANK's reply at ``<|im_end|>``)."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text


def label_token_ids(tokenizer: Any, prompt: list[int], labels: Sequence[str]) -> list[int]:
    """The single token each score label is generated as right after the generation prompt (logits mode)."""
    text = tokenizer.decode(prompt, skip_special_tokens=False)
    base = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = []
    for label in labels:
        full = tokenizer(text + label, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ValueError(f"score_mode=logits needs single-token labels; {label!r} is not one here")
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"score_mode=logits needs distinct label tokens; got {ids} for {list(labels)}")
    return ids


def generated_length(row: Sequence[int], eos_ids: Collection[object]) -> int:
    """Tokens one row of a batched ``generate`` really produced: up to and including its first end token
    (what follows is padding)."""
    for index, token in enumerate(row):
        if token in eos_ids:
            return index + 1
    return len(row)
