"""ESC-Eval per-dialogue metrics (``process_results``) and the ``average`` aggregation for the lm-eval YAMLs.

With a judge, each of the seven dimensions is the judge's 0–4 score × 25 (the paper's
0–100 scale); an invalid judge reply is NaN for that dimension, so the ``nanmean``
aggregation leaves it out of the mean (and its bootstrap stderr) instead of counting it
as 0. ``invalid_rate`` is the share of a dialogue's seven replies that were not a single
digit 0–4.

``average`` is the paper's "Average" column: the mean of the seven dimension rows as
printed (``mean_of_dimensions``). With invalid replies that differs from the mean of
per-dialogue averages (each dimension row leaves out its own invalid replies), so each
dialogue's ``average`` value carries its seven scores to the aggregation
(``DialogueScores``); the samples show the dialogue's own mean of its valid scores.

Two rows are descriptive and computed with or without a judge: how many utterances came back
empty, and how many turns had a prompt longer than the speaker's context, which lm-eval cut from
the left (``truncated_turn_rate``, absent when no turn could be measured; see
``harness/lm_eval_context.py``).

With ``trials`` > 1 (each card played several times) every value remembers its card (``CardValue``), so the
stderr of the dimension rows and ``average`` resamples cards, all trials of a card together (installed by
``harness/lm_eval_task.py``), and ``trial_sd`` can group a card's trials.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from esc_guard_tasks.esc_eval.protocol import Transcript

SCALE = 25.0  # 0–4 → 0–100


class CardValue(float):
    """One dialogue's value of a row in a multi-trial run, with its card (``language:id``): what lets the stderr
    resample cards and ``trial_sd`` group a card's trials. ``None``: a single-trial run, no grouping."""

    card: str | None

    def __new__(cls, value: float, card: str | None = None) -> CardValue:
        item = super().__new__(cls, value)
        item.card = card
        return item

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled across data-parallel ranks and into lm-eval's bootstrap worker processes
        return (CardValue, (float(self), self.card))


class DialogueScores(CardValue):
    """One dialogue's ``average`` item: as a number, the mean of its valid dimension scores (what the
    samples log shows); ``scores`` keeps the seven 0–100 scores (NaN = invalid) for ``mean_of_dimensions``."""

    scores: tuple[float, ...]

    def __new__(cls, scores: Sequence[float], card: str | None = None) -> DialogueScores:
        valid = [s for s in scores if not math.isnan(s)]
        item = super().__new__(cls, sum(valid) / len(valid) if valid else math.nan, card)
        item.scores = tuple(float(s) for s in scores)
        return item

    def __reduce__(self) -> tuple[Any, ...]:
        return (DialogueScores, (self.scores, self.card))


def mean_of_dimensions(items: Sequence[DialogueScores]) -> float:
    """The paper's Average: per dimension the mean over dialogues of its valid scores, then the mean of those
    seven rows. NaN when a dimension has no valid score at all (its row is NaN, so the printed mean is too)."""
    if not items:
        return math.nan
    for item in items:
        if not isinstance(item, DialogueScores):
            raise TypeError(f"ESC-Eval 'average' aggregates DialogueScores items, got {type(item).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a dimension without any valid score: NaN row
        rows = np.nanmean(np.array([item.scores for item in items], dtype=float), axis=0)
    return float(np.mean(rows))


def trial_sd(items: Sequence[CardValue]) -> float:
    """How much the seeker's sampling alone moves one dialogue's score: per card the standard deviation of its
    dialogues' ``average`` across trials (ddof=1: the trials are a sample of the seeker's possible dialogues, and
    with 3 trials ddof=0 would understate the spread by a factor 0.82), then the mean over cards. Cards with
    fewer than two valid averages are left out; NaN when none has two."""
    by_card: dict[str, list[float]] = {}
    for item in items:
        if not isinstance(item, CardValue) or item.card is None:
            raise TypeError(f"ESC-Eval 'trial_sd' aggregates CardValue items with a card, got {item!r}")
        if not math.isnan(item):
            by_card.setdefault(item.card, []).append(float(item))
    spreads = [statistics.stdev(values) for values in by_card.values() if len(values) > 1]
    return statistics.fmean(spreads) if spreads else math.nan


def card_clusters(items: Sequence[Any]) -> list[list[Any]] | None:
    """The items grouped by card (first-seen order), or None when they carry no card (a single-trial run)."""
    if not items or getattr(items[0], "card", None) is None:
        return None
    clusters: dict[str, list[Any]] = {}
    for item in items:
        clusters.setdefault(item.card, []).append(item)
    return list(clusters.values())


class OverCards:
    """``aggregation`` of the dialogues of a sample of cards: the statistic lm-eval's bootstrap draws cards for.
    A class, so it pickles into the bootstrap's worker processes."""

    def __init__(self, aggregation: Callable[[Sequence[Any]], float]):
        self.aggregation = aggregation
        self.__name__ = f"{aggregation.__name__} over cards"  # lm-eval's bootstrap prints it

    def __call__(self, clusters: Sequence[Sequence[Any]]) -> float:
        return self.aggregation([item for cluster in clusters for item in cluster])


def empty_turn_rate(transcript: Transcript) -> float:
    """Share of generated utterances (seeker and supporter) that are empty."""
    if not transcript.turns:
        return 1.0
    return sum(not t.text for t in transcript.turns) / len(transcript.turns)


def truncated_turn_rate(transcript: Transcript) -> float | None:
    """Share of the measured turns (both speakers) whose prompt the harness cut to fit the model's context;
    None when no turn could be measured (API backends do not say; transcripts from elsewhere)."""
    measured = [t.prompt_truncated for t in transcript.turns if t.prompt_truncated is not None]
    return sum(measured) / len(measured) if measured else None


def dimension_scores(verdicts: list[dict[str, Any]], card: str | None = None) -> dict[str, float]:
    """Per-dimension 0–100 scores (NaN when invalid), the ``average`` item, and the invalid rate."""
    scores = {v["dimension"]: (math.nan if v["score"] is None else v["score"] * SCALE) for v in verdicts}
    average = DialogueScores(list(scores.values()), card)
    valid = sum(not math.isnan(s) for s in scores.values())
    return scores | {"average": average, "invalid_rate": 1.0 - valid / len(verdicts)}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    record = json.loads(results[0])
    judged = "verdicts" in record
    transcript = Transcript.from_dict(record["transcript"] if judged else record)
    if transcript.card_id != doc["card_id"]:
        raise RuntimeError(f"transcript of card {transcript.card_id} was matched to card {doc['card_id']}")
    metrics = {"empty_turn_rate": empty_turn_rate(transcript)}
    if (truncated := truncated_turn_rate(transcript)) is not None:
        metrics["truncated_turn_rate"] = truncated
    card = f"{doc['language']}:{doc['card_id']}" if "trial" in doc else None
    if judged:
        metrics |= dimension_scores(record["verdicts"], card)
    if card is None:  # a single-trial run: plain values, exactly as before trials existed
        return metrics
    metrics = {key: value if isinstance(value, CardValue) else CardValue(value, card) for key, value in metrics.items()}
    if judged:
        metrics["trial_sd"] = CardValue(metrics["average"], card)
    return metrics
