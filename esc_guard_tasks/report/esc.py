"""ESC-Eval in the report: its descriptor, its logged dialogues, leaderboard rows and per-dimension charts.

Rows: the seven dimensions and their average (0–100) per language (``esc_eval_en``/``esc_eval_zh``) and for the
``esc_eval`` group; ``paper`` adds the ESC-Eval paper's published human-evaluation rows, labelled as what they are:
human annotation on the paper's full card set, not a run of this package (not comparable one to one). Charts:
one per language, with 95% bootstrap intervals over dialogues when the samples are given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from esc_guard_tasks.esc_eval.protocol import Transcript
from esc_guard_tasks.esc_eval.rubric import dimensions
from esc_guard_tasks.judges.base import Verdict
from esc_guard_tasks.report.benchmark import BenchmarkDescriptor, Chart, LabelFormat, Sample
from esc_guard_tasks.report.results import ReportInputError, Run, label_score, metric, task_row
from esc_guard_tasks.report.stats import Estimate, bootstrap

LANGUAGES = ("en", "zh")
GROUP = "esc_eval"
SCALE = 25.0  # judge scores 0–4 → 0–100
JUDGE_MAX = 4  # the judge's (and a human label's) top score


@cache
def esc_dimensions() -> tuple[str, ...]:
    """The seven ESC-Eval dimension metric names, in the paper's column order."""
    return tuple(d.metric for d in dimensions())


def esc_task(language: str) -> str:
    return f"{GROUP}_{language}"


TASKS = (*(esc_task(lang) for lang in LANGUAGES), GROUP)


@dataclass
class EscSample:
    """One judged (or unjudged) ESC-Eval dialogue: identity = (card_id, language), plus the trial when the run
    played each card several times (``trials``; trial 0 keeps the single-trial identity, so runs still pair)."""

    task: str
    card_id: int
    language: str
    transcript: Transcript
    verdicts: list[Verdict]
    trial: int = 0

    @property
    def key(self) -> tuple[Any, ...]:
        return (GROUP, self.card_id, self.language, *((self.trial,) if self.trial else ()))

    def score(self, dimension: str) -> int | None:
        return next((v.score for v in self.verdicts if v.dimension == dimension), None)


def read_sample(task: str, line: dict[str, Any]) -> EscSample:
    """A logged line of an ESC-Eval task: the dialogue (JSON inside the response string) and its verdicts."""
    response = line["filtered_resps"]
    record = json.loads(response[0] if isinstance(response, list) else response)
    judged = "verdicts" in record
    transcript = Transcript.from_dict(record["transcript"] if judged else record)
    verdicts = [Verdict(v["dimension"], v["score"], v["raw"]) for v in record.get("verdicts", [])]
    trial = int((line.get("doc") or {}).get("trial", 0))
    return EscSample(task, transcript.card_id, transcript.language, transcript, verdicts, trial)


@cache
def paper_reference() -> dict[str, Any]:
    """The ESC-Eval paper's human-evaluation leaderboard, with its provenance (package data)."""
    return json.loads(resources.files(__package__).joinpath("esc_eval_paper_human.json").read_text("utf-8"))


def esc_rows(runs: Sequence[Run], paper: bool = False) -> list[dict[str, Any]]:
    """One row per run and ESC-Eval task present (columns: model, task, n, dimensions, average)."""
    columns = (*esc_dimensions(), "average")
    rows = []
    for run in runs:
        for task in TASKS:
            row = task_row(run.results, task)
            if row is None:
                continue
            n = run.results.get("n-samples", {}).get(task, {}).get("effective", row.get("sample_len"))
            count = "" if n is None else str(n)
            rows.append({"model": run.label, "task": task, "n": count} | {c: metric(row, c) for c in columns})
    if paper:
        reference = paper_reference()
        for language in LANGUAGES:
            for entry in reference["rows"][language]:
                label = f"{entry['model']} ({reference['label']})"
                rows.append({"model": label, "task": esc_task(language), "n": ""} | {c: entry[c] for c in columns})
    return rows


def _esc_matrix(samples: list[EscSample]) -> np.ndarray:
    """Dialogues × dimensions, 0–100, NaN where the judge's reply was invalid."""
    return np.array(
        [[math.nan if (s := sample.score(d)) is None else s * SCALE for d in esc_dimensions()] for sample in samples]
    ).reshape(len(samples), len(esc_dimensions()))


def esc_estimates(run: Run, task: str, seed: int, resamples: int) -> list[Estimate]:
    """Dimensions + average of one run's task: the results' values, CIs from its samples (if any)."""
    row = task_row(run.results, task)
    values = [metric(row, d) for d in (*esc_dimensions(), "average")]
    samples = [s for s in run.samples.get(task, []) if isinstance(s, EscSample) and s.verdicts]
    if not samples:
        return [Estimate(v) for v in values]
    matrix = _esc_matrix(samples)

    def column(j: int) -> Callable[[np.ndarray], float]:
        if j == matrix.shape[1]:
            return lambda i: float(np.nanmean(np.nanmean(matrix[i], axis=0)))
        return lambda i: float(np.nanmean(matrix[i, j]))

    estimates = [bootstrap(len(samples), column(j), seed=seed, resamples=resamples) for j in range(len(values))]
    return [Estimate(v, e.low, e.high) for v, e in zip(values, estimates, strict=True)]


def charts(runs: Sequence[Run], seed: int, resamples: int) -> list[Chart]:
    """One chart per language: the dimensions and the average of every run that has the language's task."""
    found = []
    for language in LANGUAGES:
        task = esc_task(language)
        present = [r for r in runs if task_row(r.results, task) is not None]
        if present:
            found.append(
                Chart(
                    title=f"ESC-Eval {task}",
                    heading=task,
                    note="95% bootstrap CI over dialogues"
                    if any(r.samples.get(task) for r in present)
                    else "no samples given: no CI",
                    categories=[*esc_dimensions(), "average"],
                    series={r.label: esc_estimates(r, task, seed, resamples) for r in present},
                    ylabel="score (0-100)",
                )
            )
    return found


def sample_view(sample: Sample) -> dict[str, Any]:
    return {"kind": "esc", "sample": sample}


def read_label(item: dict[str, Any], where: str) -> tuple[tuple[Any, ...], dict[str, int | None]]:
    """``{"card_id": 32025, "language": "en", "scores": {"fluency": 3, "overall": 1}}``: any subset of the seven
    dimensions, 0–4, ``null`` = not labelled; it labels the card's (first) dialogue in that language."""
    if item["language"] not in LANGUAGES or not isinstance(item["scores"], dict):
        raise ReportInputError(f"{where}: language must be 'en' or 'zh' and scores an object")
    unknown = set(item["scores"]) - set(esc_dimensions())
    if unknown:
        raise ReportInputError(f"{where}: unknown dimensions {sorted(unknown)}; known: {list(esc_dimensions())}")
    scores = {d: label_score(v, JUDGE_MAX, where, f"scores.{d}") for d, v in item["scores"].items()}
    return (GROUP, item["card_id"], item["language"]), scores


def judged_score(sample: Sample, dimension: str, value: int, where: str) -> tuple[str, int, Any]:
    assert isinstance(sample, EscSample)
    return dimension, JUDGE_MAX, sample.score(dimension)


ESC_EVAL = BenchmarkDescriptor(
    family=GROUP,
    title="ESC-Eval",
    task_prefix=GROUP,
    caption="ESC-Eval (0-100, higher is better)",
    rows=esc_rows,
    comparison_key=("model", "task"),
    read_sample=read_sample,
    sample_view=sample_view,
    charts=charts,
    labels=LabelFormat(("card_id", "language", "scores"), read_label, judged_score),
)
