"""What the ESC-Eval judge reads and how its reply becomes a score.

Byte-for-byte the reference scorer's (``score.py``): the rubric prompt of the
dimension, the transcript rendered with the reference's speaker-tag rewrites (Chinese
tags for both languages, the seeker tag losing its colon — the ESC-RANK adapters were
trained on exactly this), the closing instruction with the dimension string (typos
kept), wrapped in InternLM2's chat format with its default system prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from esc_guard_tasks.esc_eval.protocol import Language, Transcript, prompts


@dataclass(frozen=True)
class Dimension:
    index: int
    key: str  # the reference's adapter key (``fluency``, ``diversity``, …)
    metric: str  # the name users see (the paper's column: ``fluency``, ``expression``, …)
    closing_name: str  # the string in the closing instruction (``fluecy``: the reference's typo)

    def adapter(self, language: Language) -> str:
        """ESC-RANK adapter folder: ``<key>_en`` for English dialogues, ``<key>`` for Chinese ones."""
        return f"{self.key}_en" if language == "en" else self.key


def dimensions() -> list[Dimension]:
    judge = prompts()["judge"]
    return [
        Dimension(i, key, name.lower(), closing)
        for i, (key, name, closing) in enumerate(
            zip(judge["adapter_keys"], judge["paper_names"], judge["dimension_strings"], strict=True)
        )
    ]


def render_dialogue(transcript: Transcript) -> str:
    """The reference's dialogue block: turns joined by a blank line, then the tag rewrites, in order."""
    judge = prompts()["judge"]
    dialogue = judge["turn_separator"].join(transcript.reference_lines())
    for rewrite in judge["speaker_tag_rewrites"]:
        dialogue = dialogue.replace(rewrite["old"], rewrite["new"])
    return dialogue


def judge_query(transcript: Transcript, dimension: Dimension) -> str:
    """The user message the reference sends to the judge for one dialogue and dimension."""
    judge = prompts()["judge"]
    return (
        judge["rubric_prompts"][transcript.language][dimension.index]
        + judge["dialogue_header"]
        + render_dialogue(transcript).strip()
        + judge["dialogue_trailer"]
        + judge["closing_template"].format(dimension=dimension.closing_name)
    )


def internlm2_prompt(query: str) -> str:
    """InternLM2 ``chat()``'s prompt for a single turn with its default system prompt.

    The tokenizer adds BOS once; the tokenizer's own chat template would drop the
    system block, so the string is built here.
    """
    meta = prompts()["internlm2_meta_instruction"]
    return f"<|im_start|>system\n{meta}<|im_end|>\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"


SCORE_LABELS = ("0", "1", "2", "3", "4")
_STRICT = re.compile(r"[0-4]")


def parse_strict(reply: str) -> int | None:
    """A score only when the stripped reply is a single digit 0–4; anything else is invalid (None)."""
    text = reply.strip()
    return int(text) if _STRICT.fullmatch(text) else None


def parse_reference(reply: str) -> int:
    """The reference parser, kept for comparability: the first of '0'..'4' found anywhere, else -1."""
    for label in SCORE_LABELS:
        if label in reply:
            return int(label)
    return -1
