"""``esc-guard report html``: one self-contained HTML file (no network needed to view it).

Charts per dimension (matplotlib, embedded as base64 PNG) with 95% bootstrap intervals computed from the
logged samples when they are given (units: dialogues for ESC-Eval, MLLMGuard items — a noise or position
pair stays together); per-language and per-subtask tables; the leaderboard with differences to the first
run; and a browser over samples: ESC-Eval transcripts turn by turn with each dimension's score and the
judge's raw reply, MLLMGuard image, prompt, answer and verdict. Every piece of model or dataset text goes
through Jinja2 autoescaping; the page's only script filters the sample list.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from esc_guard_tasks.mllmguard import formulas as guard_metrics
from esc_guard_tasks.mllmguard.taxonomy import DIMENSION, DIMENSIONS, compose
from esc_guard_tasks.report.results import (
    ESC_LANGUAGES,
    MLLMGUARD_DEMO_GROUP,
    MLLMGUARD_GROUP,
    MLLMGUARD_METRICS,
    EscSample,
    GuardSample,
    Run,
    esc_dimensions,
    esc_task,
    load_runs,
    metric,
    mllmguard_task,
    task_row,
)
from esc_guard_tasks.report.stats import RESAMPLES, SEED, Estimate, bootstrap
from esc_guard_tasks.report.table import esc_rows, mllmguard_rows

ESC_SCALE = 25.0
THUMBNAIL = 256
MAX_SAMPLES = 50
_LANGUAGE_SUFFIXES = tuple(f"_{lang}" for lang in ESC_LANGUAGES)
# C0 and C1 controls other than tab and newline; bidirectional marks, embeddings, overrides and isolates.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible_controls(value: Any) -> Any:
    """Every value the page shows, with control characters as visible escapes (``\\x07``) instead of raw bytes.

    Model output may carry C0/C1 controls (a bell, an escape sequence, a NUL) or bidirectional overrides that
    reorder what a reader sees; autoescaping leaves them as they are. The escape is plain text, so it is
    escaped like the rest (also inside attributes)."""
    if not isinstance(value, str) or not _HIDDEN.search(value):
        return value
    return _HIDDEN.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", value)


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def bar_chart(title: str, categories: list[str], series: dict[str, list[Estimate]], ylabel: str) -> str:
    """Grouped bars (one group per category, one bar per run) with CI whiskers where defined; base64 PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 0.9 * len(categories) + 2), 3.4))
    axes = figure.subplots()
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for index, (label, estimates) in enumerate(series.items()):
        values = np.array([e.value for e in estimates])
        low = np.array([e.value - e.low for e in estimates])
        high = np.array([e.high - e.value for e in estimates])
        errors = np.clip(np.nan_to_num(np.vstack([low, high]), nan=0.0), 0, None)  # a percentile CI may miss the value
        axes.bar(x + index * width, np.nan_to_num(values), width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(x + width * (len(series) - 1) / 2, categories, rotation=20)
    axes.set_ylim(0, 100)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if series:
        axes.legend(fontsize="small")
    return _png(figure)


def _esc_matrix(samples: list[EscSample]) -> np.ndarray:
    """Dialogues × dimensions, 0–100, NaN where the judge's reply was invalid."""
    return np.array(
        [
            [math.nan if (s := sample.score(d)) is None else s * ESC_SCALE for d in esc_dimensions()]
            for sample in samples
        ]
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


def _resampled(units: list[list[dict[str, Any]]], indices: np.ndarray) -> list[dict[str, Any]]:
    """The records of the drawn items; a drawn-again item gets a fresh id (pairs stay valid, no duplicates)."""
    return [record | {"item_id": f"{record['item_id']}#{n}"} for n, i in enumerate(indices) for record in units[i]]


def _guard_value(records: list[dict[str, Any]], dimension: str, name: str, scale: str) -> float:
    """ASD or PAR of a dimension (mean of its configs) or of ``mllmguard`` (mean of the five); NaN propagates."""
    options: dict[str, Any] = {"hallucination_scale": scale, "on_unpaired": "exclude"}
    per_config = {
        c: getattr(guard_metrics.config_result(records, c, **options), name)
        for c, d in DIMENSION.items()
        if dimension in (MLLMGUARD_GROUP, d)
    }
    composite = compose(per_config)
    return composite.overall if dimension == MLLMGUARD_GROUP else composite.dimensions[dimension]


def _hallucination_scale(run: Run) -> str:
    config = run.results.get("configs", {}).get(mllmguard_task("hallucination"), {})
    return config.get("metadata", {}).get("mllmguard", {}).get("settings", {}).get("hallucination_scale", "reference")


def guard_estimates(run: Run, name: str, seed: int, resamples: int) -> list[Estimate]:
    """ASD or PAR per dimension + overall: the results' values, CIs over the samples' items (if any)."""
    records = [s.record for samples in run.samples.values() for s in samples if isinstance(s, GuardSample)]
    scale = _hallucination_scale(run)
    estimates = []
    for dimension in (*DIMENSIONS, MLLMGUARD_GROUP):
        value = metric(
            task_row(run.results, mllmguard_task(dimension) if dimension != MLLMGUARD_GROUP else dimension), name
        )
        mine = [r for r in records if dimension == MLLMGUARD_GROUP or r.get("dimension") == dimension]
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


def _breakdown(run: Run, prefixes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every per-language / per-subtask metric row of our tasks (``asd_en``, ``par_trade_secret``, …)."""
    rows = []
    for task, row in {**run.results.get("results", {}), **run.results.get("groups", {})}.items():
        if not task.startswith(prefixes):
            continue
        for key, value in row.items():
            name, _, _ = key.partition(",")
            if "_stderr" in name or not name.startswith(("asd_", "par_")) or not isinstance(value, (int, float)):
                continue
            kind = "language" if name.endswith(_LANGUAGE_SUFFIXES) else "subtask"
            rows.append({"run": run.label, "task": task, "kind": kind, "metric": name, "value": float(value)})
    return rows


def _comparison(rows: list[dict[str, Any]], key_columns: tuple[str, ...]) -> dict[str, Any]:
    """Leaderboard rows with, for every numeric column, the difference to the first run's row of the same key."""
    first: dict[tuple, dict[str, Any]] = {}
    out = []
    for row in rows:
        key = tuple(row[c] for c in key_columns if c != "model")
        base = first.setdefault(key, row)
        cells = []
        for column, value in row.items():
            if isinstance(value, float):
                delta = value - base[column] if base is not row else None
                cells.append({"value": value, "delta": delta})
            else:
                cells.append({"text": "" if value is None else str(value)})
        out.append(cells)
    return {"columns": list(rows[0]) if rows else [], "rows": out}


def _samples_view(run: Run, max_samples: int) -> list[dict[str, Any]]:
    views = []
    for task, samples in sorted(run.samples.items()):
        shown = samples[:max_samples]
        entries = []
        for sample in shown:
            if isinstance(sample, EscSample):
                entries.append({"kind": "esc", "sample": sample})
            else:
                entries.append(
                    {"kind": "guard", "record": sample.record, "image": _image(sample.record.get("image_path"))}
                )
        views.append({"run": run.label, "task": task, "total": len(samples), "entries": entries})
    return views


def build_report(
    runs: list[Run], *, seed: int = SEED, resamples: int = RESAMPLES, max_samples: int = MAX_SAMPLES
) -> str:
    """The whole page as a string."""
    import jinja2

    charts = []
    for language in ESC_LANGUAGES:
        task = esc_task(language)
        present = [r for r in runs if task_row(r.results, task) is not None]
        if present:
            series = {r.label: esc_estimates(r, task, seed, resamples) for r in present}
            with_ci = any(r.samples.get(task) for r in present)
            charts.append(
                {
                    "title": f"ESC-Eval {task}",
                    "note": "95% bootstrap CI over dialogues" if with_ci else "no samples given: no CI",
                    "png": bar_chart(task, [*esc_dimensions(), "average"], series, "score (0-100)"),
                }
            )
    guard_runs = [r for r in runs if any(task_row(r.results, mllmguard_task(d)) for d in DIMENSIONS)]
    for name in MLLMGUARD_METRICS:
        if guard_runs:
            series = {r.label: guard_estimates(r, name, seed, resamples) for r in guard_runs}
            with_ci = any(r.samples for r in guard_runs)
            direction = "lower is better" if name == "asd" else "higher is better"
            charts.append(
                {
                    "title": f"MLLMGuard {name.upper()} ({direction})",
                    "note": "95% bootstrap CI over items" if with_ci else "no samples given: no CI",
                    "png": bar_chart(
                        f"MLLMGuard {name.upper()}", [*DIMENSIONS, "overall"], series, f"{name.upper()} (x100)"
                    ),
                }
            )
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, finalize=visible_controls)
    template = environment.from_string(resources.files(__package__).joinpath("report.html.j2").read_text("utf-8"))
    return template.render(
        runs=runs,
        charts=charts,
        esc=_comparison(esc_rows(runs), ("model", "task")),
        guard=_comparison(mllmguard_rows(runs) + mllmguard_rows(runs, MLLMGUARD_DEMO_GROUP), ("model",)),
        breakdown=[row for run in runs for row in _breakdown(run, ("mllmguard", "esc_eval"))],
        samples=[view for run in runs for view in _samples_view(run, max_samples)],
        dimensions=esc_dimensions(),
        seed=seed,
        resamples=resamples,
        isnan=math.isnan,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, nargs="+", help="results files (lm-eval or lmms-eval)")
    parser.add_argument("--samples", type=Path, nargs="*", default=[], help="logged samples files of those runs")
    parser.add_argument(
        "--output", type=Path, default=Path("esc_guard_report.html"), help="page to write (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=SEED, help="bootstrap seed (default %(default)s)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (default %(default)s)")
    parser.add_argument("--max-samples", type=int, default=MAX_SAMPLES, help="samples shown per task and run")
    parser.add_argument("--force", action="store_true", help="use samples that do not match their results file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    page = build_report(
        load_runs(args.results, args.samples, force=args.force),
        seed=args.seed,
        resamples=args.resamples,
        max_samples=args.max_samples,
    )
    args.output.write_text(page, "utf-8")
    print(args.output)
    return 0
