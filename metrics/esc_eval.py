"""ESC-Eval per-dialogue metrics (``process_results``) for the lm-eval task YAMLs.

Without a judge (``judge=none``) the rows are descriptive only and say nothing about
support quality: how many of the dialogue's utterances came back empty.
"""

from __future__ import annotations

from typing import Any

from esc_guard_tasks.esc_eval.protocol import Transcript


def empty_turn_rate(transcript: Transcript) -> float:
    """Share of generated utterances (seeker and supporter) that are empty."""
    if not transcript.turns:
        return 1.0
    return sum(not t.text for t in transcript.turns) / len(transcript.turns)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    transcript = Transcript.from_json(results[0])
    if transcript.card_id != doc["card_id"]:
        raise RuntimeError(f"transcript of card {transcript.card_id} was matched to card {doc['card_id']}")
    return {"empty_turn_rate": empty_turn_rate(transcript)}
