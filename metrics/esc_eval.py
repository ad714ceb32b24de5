"""ESC-Eval per-dialogue metrics (``process_results``) for the lm-eval task YAMLs.

With a judge, each of the seven dimensions is the judge's 0–4 score × 25 (the paper's
0–100 scale); an invalid judge reply is NaN for that dimension, so the ``nanmean``
aggregation leaves it out of the mean (and its bootstrap stderr) instead of counting it
as 0. ``average`` is the mean of a dialogue's valid dimension scores; ``invalid_rate``
the share of its seven replies that were not a single digit 0–4.

Without a judge (``judge=none``) the only row is descriptive: how many utterances came
back empty.
"""

from __future__ import annotations

import json
import math
from typing import Any

from esc_guard_tasks.esc_eval.protocol import Transcript

SCALE = 25.0  # 0–4 → 0–100


def empty_turn_rate(transcript: Transcript) -> float:
    """Share of generated utterances (seeker and supporter) that are empty."""
    if not transcript.turns:
        return 1.0
    return sum(not t.text for t in transcript.turns) / len(transcript.turns)


def dimension_scores(verdicts: list[dict[str, Any]]) -> dict[str, float]:
    """Per-dimension 0–100 scores (NaN when invalid), their average, and the invalid rate."""
    scores = {v["dimension"]: (math.nan if v["score"] is None else v["score"] * SCALE) for v in verdicts}
    valid = [s for s in scores.values() if not math.isnan(s)]
    return scores | {
        "average": sum(valid) / len(valid) if valid else math.nan,
        "invalid_rate": 1.0 - len(valid) / len(verdicts),
    }


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    record = json.loads(results[0])
    judged = "verdicts" in record
    transcript = Transcript.from_dict(record["transcript"] if judged else record)
    if transcript.card_id != doc["card_id"]:
        raise RuntimeError(f"transcript of card {transcript.card_id} was matched to card {doc['card_id']}")
    metrics = {"empty_turn_rate": empty_turn_rate(transcript)}
    if judged:
        metrics |= dimension_scores(record["verdicts"])
    return metrics
