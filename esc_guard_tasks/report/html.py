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
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from esc_guard_tasks.report import benchmarks
from esc_guard_tasks.report.benchmark import BenchmarkDescriptor, Chart
from esc_guard_tasks.report.results import Run
from esc_guard_tasks.report.runs import load_runs
from esc_guard_tasks.report.stats import RESAMPLES, SEED, Estimate
from esc_guard_tasks.usage import usage_rows

MAX_SAMPLES = 50
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


def _breakdown(run: Run) -> list[dict[str, Any]]:
    """Every per-language / per-subtask metric row of our tasks (``asd_en``, ``par_trade_secret``, …): the
    metrics each benchmark names in ``breakdown_metrics``."""
    rows = []
    for task, row in {**run.results.get("results", {}), **run.results.get("groups", {})}.items():
        benchmark = benchmarks.benchmark_of(task)
        if benchmark is None:
            continue
        languages = tuple(f"_{language}" for language in benchmark.languages)
        for key, value in row.items():
            name, _, _ = key.partition(",")
            if (
                "_stderr" in name
                or not name.startswith(benchmark.breakdown_metrics)
                or not isinstance(value, (int, float))
            ):
                continue
            kind = "language" if name.endswith(languages) else "subtask"
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


def _comparisons(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """One comparison table per section (title): a benchmark's rows, then those of the benchmarks that join it."""
    sections: dict[str, tuple[tuple[str, ...], list[dict[str, Any]]]] = {}
    for benchmark in benchmarks.BENCHMARKS:
        key, rows = sections.setdefault(benchmark.comparison_section, (benchmark.comparison_key, []))
        rows.extend(benchmark.rows(runs, False))
    return {title: _comparison(rows, key) for title, (key, rows) in sections.items()}


def _owner(task: str) -> BenchmarkDescriptor:
    """The benchmark of a task whose samples were read (``runs.read_samples`` refuses anyone else's)."""
    benchmark = benchmarks.benchmark_of(task)
    assert benchmark is not None, task
    return benchmark


def _chart(chart: Chart) -> dict[str, str]:
    return {
        "title": chart.title,
        "note": chart.note,
        "png": bar_chart(chart.heading, chart.categories, chart.series, chart.ylabel),
    }


def _samples_view(run: Run, max_samples: int) -> list[dict[str, Any]]:
    views = []
    for task, samples in sorted(run.samples.items()):
        view = _owner(task).sample_view
        entries = [view(sample) for sample in samples[:max_samples]]
        views.append({"run": run.label, "task": task, "total": len(samples), "entries": entries})
    return views


def build_report(
    runs: list[Run], *, seed: int = SEED, resamples: int = RESAMPLES, max_samples: int = MAX_SAMPLES
) -> str:
    """The whole page as a string."""
    import jinja2

    charts = [_chart(chart) for benchmark in benchmarks.BENCHMARKS for chart in benchmark.charts(runs, seed, resamples)]
    environment = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: resources.files(__package__).joinpath(name).read_text("utf-8")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=visible_controls,
    )
    template = environment.get_template("report.html.j2")
    return template.render(
        runs=runs,
        charts=charts,
        heading=f"{benchmarks.titles(' / ')} report",
        names=benchmarks.titles(),
        comparisons=_comparisons(runs),
        breakdown=[row for run in runs for row in _breakdown(run)],
        usage=[{"run": run.label} | row for run in runs for row in usage_rows(run.results)],
        samples=[view for run in runs for view in _samples_view(run, max_samples)],
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
