"""``esc-guard report table``: one leaderboard across models and runs, as Markdown, CSV or LaTeX.

ESC-Eval: the seven dimensions and their average (0–100) per language (``esc_eval_en``/``esc_eval_zh``)
and for the ``esc_eval`` group. MLLMGuard: ASD ↓ / PAR ↑ per dimension and overall. With
``--paper-reference`` the ESC-Eval paper's published human-evaluation rows are added, labelled as what they
are: human annotation on the paper's full card set, not a run of this package (not comparable one to one).
"""

from __future__ import annotations

import argparse
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from esc_guard_tasks.mllmguard.taxonomy import DIMENSIONS as MLLMGUARD_DIMENSIONS
from esc_guard_tasks.report.results import (
    ESC_LANGUAGES,
    MLLMGUARD_DEMO_GROUP,
    MLLMGUARD_GROUP,
    MLLMGUARD_METRICS,
    Run,
    esc_dimensions,
    esc_task,
    load_runs,
    metric,
    mllmguard_task,
    task_row,
)

FORMATS = ("markdown", "csv", "latex")
BENCHMARKS = ("esc_eval", "mllmguard")
ESC_TASKS = (*(esc_task(lang) for lang in ESC_LANGUAGES), "esc_eval")


@cache
def paper_reference() -> dict[str, Any]:
    """The ESC-Eval paper's human-evaluation leaderboard, with its provenance (package data)."""
    return json.loads(resources.files(__package__).joinpath("esc_eval_paper_human.json").read_text("utf-8"))


def esc_rows(runs: list[Run], paper: bool = False) -> list[dict[str, Any]]:
    """One row per run and ESC-Eval task present (columns: model, task, n, dimensions, average)."""
    columns = (*esc_dimensions(), "average")
    rows = []
    for run in runs:
        for task in ESC_TASKS:
            row = task_row(run.results, task)
            if row is None:
                continue
            n = run.results.get("n-samples", {}).get(task, {}).get("effective", row.get("sample_len"))
            count = "" if n is None else str(n)
            rows.append({"model": run.label, "task": task, "n": count} | {c: metric(row, c) for c in columns})
    if paper:
        reference = paper_reference()
        for language in ESC_LANGUAGES:
            for entry in reference["rows"][language]:
                label = f"{entry['model']} ({reference['label']})"
                rows.append({"model": label, "task": esc_task(language), "n": ""} | {c: entry[c] for c in columns})
    return rows


def mllmguard_rows(runs: list[Run], group: str = MLLMGUARD_GROUP) -> list[dict[str, Any]]:
    """One row per run with MLLMGuard results: ASD/PAR of each dimension and overall. ``group`` =
    ``MLLMGUARD_DEMO_GROUP`` reads the demo tasks' rows instead, their model labelled ``[DEMO DATA]``."""
    rows = []
    for run in runs:
        parts = {d: task_row(run.results, mllmguard_task(d, group)) for d in MLLMGUARD_DIMENSIONS}
        parts[group] = task_row(run.results, group)
        if not any(parts.values()):
            continue
        row: dict[str, Any] = {"model": run.label + (" [DEMO DATA]" if group == MLLMGUARD_DEMO_GROUP else "")}
        for name, values in parts.items():
            label = "overall" if name == group else name
            row |= {f"{label} {m.upper()}": metric(values, m) for m in MLLMGUARD_METRICS}
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], fmt: str, caption: str) -> str:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if fmt == "csv":
        return frame.to_csv(index=False, float_format="%.2f")
    if fmt == "latex":
        return frame.to_latex(index=False, escape=True, na_rep="--", float_format="%.2f", caption=caption)
    cells = frame.astype(object).where(frame.notna(), None)  # tabulate's missingval applies to None, not NaN
    return f"**{caption}**\n\n" + cells.to_markdown(index=False, floatfmt=".2f", missingval="n/a") + "\n"


def leaderboard(
    runs: list[Run], fmt: str = "markdown", benchmarks: tuple[str, ...] = BENCHMARKS, paper: bool = False
) -> str:
    """The tables of the requested benchmarks that have rows, separated by a blank line."""
    tables = []
    if "esc_eval" in benchmarks and (rows := esc_rows(runs, paper)):
        tables.append(render(rows, fmt, "ESC-Eval (0-100, higher is better)"))
    if "mllmguard" in benchmarks and (rows := mllmguard_rows(runs)):
        tables.append(render(rows, fmt, "MLLMGuard (ASD lower is better, PAR higher is better; x100)"))
    if "mllmguard" in benchmarks and (rows := mllmguard_rows(runs, MLLMGUARD_DEMO_GROUP)):
        tables.append(render(rows, fmt, "MLLMGuard DEMO DATA (esc-guard demo mllmguard; not benchmark results)"))
    if not tables:
        raise SystemExit("no ESC-Eval or MLLMGuard rows in the given results files" + _why_no_rows(runs))
    return "\n".join(tables)


def _why_no_rows(runs: list[Run]) -> str:
    """The likely reason when a run of our tasks has no scores: it ran without a judge (as ``esc-guard demo`` does)."""
    unjudged = sorted(
        {
            run.label
            for run in runs
            for config in run.results.get("configs", {}).values()
            if ((config.get("metadata") or {}).get("esc_eval") or {}).get("judge", {}).get("judge") == "none"
        }
    )
    if not unjudged:
        return ""
    return (
        f": {', '.join(unjudged)} ran without a judge (judge=none, as `esc-guard demo` does), so there are no scores "
        "to tabulate. Read the dialogues with `esc-guard report html RESULTS --samples SAMPLES.jsonl`, or score them "
        "with `esc-guard rescore SAMPLES.jsonl`"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, nargs="+", help="results files (lm-eval or lmms-eval)")
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default markdown)")
    parser.add_argument("--benchmark", choices=BENCHMARKS, action="append", help="only these (default: both)")
    parser.add_argument("--paper-reference", action="store_true", help="add the ESC-Eval paper's human-evaluation rows")
    parser.add_argument("--output", type=Path, default=None, help="file to write (default: stdout)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    text = leaderboard(load_runs(args.results), args.format, tuple(args.benchmark or BENCHMARKS), args.paper_reference)
    if args.output:
        args.output.write_text(text, "utf-8")
    else:
        print(text, end="")
    return 0
