"""MLLMGuard in the report: its descriptors (the benchmark, and the offline demo's DEMO DATA reported apart), its
logged queries, leaderboard rows and ASD/PAR charts.

Rows: ASD ↓ / PAR ↑ of each dimension and overall, one row per run. Charts: ASD and PAR per dimension and
overall with 95% bootstrap intervals over items (a noise or position pair stays together) when the samples are
given. The demo group (``mllmguard_demo``, written by ``esc-guard demo mllmguard``) gets its own table with the
model labelled ``[DEMO DATA]``, never a row or chart of the benchmark.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from esc_guard_tasks.mllmguard import formulas as guard_metrics
from esc_guard_tasks.mllmguard.taxonomy import DIMENSION, DIMENSIONS, compose
from esc_guard_tasks.report.benchmark import BenchmarkDescriptor, Chart, LabelFormat, Sample
from esc_guard_tasks.report.results import ReportInputError, Run, label_score, metric, task_row
from esc_guard_tasks.report.stats import Estimate, bootstrap

GROUP = "mllmguard"
DEMO_GROUP = "mllmguard_demo"  # esc-guard demo mllmguard: DEMO DATA, reported apart, never as mllmguard
METRICS = ("asd", "par")
LANGUAGES = ("en", "zh")
THUMBNAIL = 256
CAPTION = "MLLMGuard (ASD lower is better, PAR higher is better; x100)"
JUDGE_MAX = {"hallucination": 1}  # the judge's (and a human label's) top score by config; the others 0–3
DEFAULT_JUDGE_MAX = 3


def mllmguard_task(dimension: str, group: str = GROUP) -> str:
    return f"{group}_{dimension}"


@dataclass
class GuardSample:
    """One MLLMGuard query as lmms-eval logged it: our ``judge`` record (ids, prompt, answer, verdict)."""

    task: str
    record: dict[str, Any]

    @property
    def key(self) -> tuple[Any, ...]:
        return (GROUP, self.record["query_id"])


def read_sample(task: str, line: dict[str, Any]) -> GuardSample:
    """A logged line of an MLLMGuard task: the ``judge`` record our task class writes."""
    record = line["judge"]
    if not isinstance(record, dict) or "query_id" not in record:
        raise KeyError("judge.query_id")
    return GuardSample(task, record)


def mllmguard_rows(runs: Sequence[Run], group: str = GROUP) -> list[dict[str, Any]]:
    """One row per run with MLLMGuard results: ASD/PAR of each dimension and overall. ``group`` =
    ``DEMO_GROUP`` reads the demo tasks' rows instead, their model labelled ``[DEMO DATA]``."""
    rows = []
    for run in runs:
        parts = {d: task_row(run.results, mllmguard_task(d, group)) for d in DIMENSIONS}
        parts[group] = task_row(run.results, group)
        if not any(parts.values()):
            continue
        row: dict[str, Any] = {"model": run.label + (" [DEMO DATA]" if group == DEMO_GROUP else "")}
        for name, values in parts.items():
            label = "overall" if name == group else name
            row |= {f"{label} {m.upper()}": metric(values, m) for m in METRICS}
        rows.append(row)
    return rows


def _resampled(units: list[list[dict[str, Any]]], indices: np.ndarray) -> list[dict[str, Any]]:
    """The records of the drawn items; a drawn-again item gets a fresh id (pairs stay valid, no duplicates)."""
    return [record | {"item_id": f"{record['item_id']}#{n}"} for n, i in enumerate(indices) for record in units[i]]


def _guard_value(records: list[dict[str, Any]], dimension: str, name: str, scale: str) -> float:
    """ASD or PAR of a dimension (mean of its configs) or of ``mllmguard`` (mean of the five); NaN propagates."""
    options: dict[str, Any] = {"hallucination_scale": scale, "on_unpaired": "exclude"}
    per_config = {
        c: getattr(guard_metrics.config_result(records, c, **options), name)
        for c, d in DIMENSION.items()
        if dimension in (GROUP, d)
    }
    composite = compose(per_config)
    return composite.overall if dimension == GROUP else composite.dimensions[dimension]


def _hallucination_scale(run: Run) -> str:
    config = run.results.get("configs", {}).get(mllmguard_task("hallucination"), {})
    return config.get("metadata", {}).get("mllmguard", {}).get("settings", {}).get("hallucination_scale", "reference")


def guard_estimates(run: Run, name: str, seed: int, resamples: int) -> list[Estimate]:
    """ASD or PAR per dimension + overall: the results' values, CIs over the samples' items (if any)."""
    records = [s.record for samples in run.samples.values() for s in samples if isinstance(s, GuardSample)]
    scale = _hallucination_scale(run)
    estimates = []
    for dimension in (*DIMENSIONS, GROUP):
        value = metric(task_row(run.results, mllmguard_task(dimension) if dimension != GROUP else dimension), name)
        mine = [r for r in records if dimension == GROUP or r.get("dimension") == dimension]
        items: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in mine:
            items.setdefault((record["config"], record["item_id"]), []).append(record)
        units = list(items.values())
        if not units:
            estimates.append(Estimate(value))
            continue
        drawn = bootstrap(
            len(units),
            lambda i, d=dimension, u=units: _guard_value(_resampled(u, i), d, name, scale),  # type: ignore[misc]
            seed=seed,
            resamples=resamples,
        )
        estimates.append(Estimate(value, drawn.low, drawn.high))
    return estimates


def charts(runs: Sequence[Run], seed: int, resamples: int) -> list[Chart]:
    """ASD and PAR charts over the runs that have the benchmark's dimension tasks."""
    guard_runs = [r for r in runs if any(task_row(r.results, mllmguard_task(d)) for d in DIMENSIONS)]
    if not guard_runs:
        return []
    note = "95% bootstrap CI over items" if any(r.samples for r in guard_runs) else "no samples given: no CI"
    return [
        Chart(
            title=f"MLLMGuard {name.upper()} ({'lower is better' if name == 'asd' else 'higher is better'})",
            heading=f"MLLMGuard {name.upper()}",
            note=note,
            categories=[*DIMENSIONS, "overall"],
            series={r.label: guard_estimates(r, name, seed, resamples) for r in guard_runs},
            ylabel=f"{name.upper()} (x100)",
        )
        for name in METRICS
    ]


def no_charts(runs: Sequence[Run], seed: int, resamples: int) -> list[Chart]:
    """The demo's DEMO DATA gets no chart: its numbers check the plumbing, not a model."""
    return []


def _image(path: str | None) -> str | None:
    """A thumbnail of a logged image as base64 PNG; None when the file is not readable here."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # type: ignore[arg-type]
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except (OSError, UnidentifiedImageError, TypeError, ValueError):
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def sample_view(sample: Sample) -> dict[str, Any]:
    assert isinstance(sample, GuardSample)
    return {"kind": "guard", "record": sample.record, "image": _image(sample.record.get("image_path"))}


def read_label(item: dict[str, Any], where: str) -> tuple[tuple[Any, ...], dict[str, int | None]]:
    """``{"query_id": "privacy/all/1/single", "score": 2}`` (the ``query_id`` of the samples' ``judge`` record;
    0–3, hallucination 0/1, which is checked once the label meets its sample)."""
    return (GROUP, str(item["query_id"])), {"": label_score(item["score"], DEFAULT_JUDGE_MAX, where, "score")}


def judged_score(sample: Sample, dimension: str, value: int, where: str) -> tuple[str, int, Any]:
    assert isinstance(sample, GuardSample)
    config = sample.record.get("config", "")
    top = JUDGE_MAX.get(config, DEFAULT_JUDGE_MAX)
    if value > top:
        raise ReportInputError(f"{where}: score must be 0–{top} for {config}, got {value}")
    return sample.record.get("dimension", config), top, sample.record.get("score")


MLLMGUARD = BenchmarkDescriptor(
    family=GROUP,
    title="MLLMGuard",
    task_prefix=GROUP,
    caption=CAPTION,
    rows=lambda runs, paper: mllmguard_rows(runs),
    comparison_key=("model",),
    read_sample=read_sample,
    sample_view=sample_view,
    charts=charts,
    breakdown_metrics=("asd_", "par_"),
    languages=LANGUAGES,
    labels=LabelFormat(("query_id", "score"), read_label, judged_score),
)
MLLMGUARD_DEMO = replace(
    MLLMGUARD,
    task_prefix=DEMO_GROUP,
    caption="MLLMGuard DEMO DATA (esc-guard demo mllmguard; not benchmark results)",
    rows=lambda runs, paper: mllmguard_rows(runs, DEMO_GROUP),
    charts=no_charts,
    section=CAPTION,  # the HTML compares demo rows in the benchmark's table, each labelled [DEMO DATA]
)
