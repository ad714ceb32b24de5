"""``esc-guard report table``: one leaderboard across models and runs, as Markdown, CSV or LaTeX.

ESC-Eval: the seven dimensions and their average (0–100) per language (``esc_eval_en``/``esc_eval_zh``)
and for the ``esc_eval`` group. MLLMGuard: ASD ↓ / PAR ↑ per dimension and overall. With
``--paper-reference`` the ESC-Eval paper's published human-evaluation rows are added, labelled as what they
are: human annotation on the paper's full card set, not a run of this package (not comparable one to one).
Runs that recorded their token usage get a last table: tokens per task and role, and the estimated cost. A CSV
holds one table, so in CSV the usage goes to its own file beside ``--output`` (``NAME.usage.csv``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from esc_guard_tasks.report import benchmarks
from esc_guard_tasks.report.results import Run
from esc_guard_tasks.report.runs import load_runs
from esc_guard_tasks.usage import usage_rows

FORMATS = ("markdown", "csv", "latex")
USAGE_CAPTION = "Tokens per role, as each run recorded them (reused: not sent; est. cost at the run's own prices)"


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
    runs: list[Run], fmt: str = "markdown", families: tuple[str, ...] | None = None, paper: bool = False
) -> str:
    """The tables of the requested benchmark families (default: all) that have rows, separated by a blank line."""
    wanted = _families(families)
    tables = [
        render(rows, fmt, benchmark.caption)
        for benchmark in benchmarks.BENCHMARKS
        if benchmark.family in wanted and (rows := benchmark.rows(runs, paper))
    ]
    if not tables:
        raise SystemExit(f"no {benchmarks.titles()} rows in the given results files" + _why_no_rows(runs))
    if fmt != "csv" and (usage := usage_table(runs, fmt, wanted)):
        tables.append(usage)
    return "\n".join(tables)


def usage_table(runs: list[Run], fmt: str, families: tuple[str, ...] | None = None) -> str:
    """Tokens per model, task and role of the given benchmark families (default: all); empty when no run
    recorded usage."""
    wanted = _families(families)
    usage = [
        {"model": run.label} | row
        for run in runs
        for row in usage_rows(run.results)
        if (owner := benchmarks.benchmark_of(row["task"])) is not None and owner.family in wanted
    ]
    return render(usage, fmt, USAGE_CAPTION) if usage else ""


def _families(families: tuple[str, ...] | None) -> tuple[str, ...]:
    return benchmarks.families() if families is None else families


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
    parser.add_argument(
        "--benchmark", choices=benchmarks.families(), action="append", help="only these (default: every benchmark)"
    )
    parser.add_argument("--paper-reference", action="store_true", help="add the ESC-Eval paper's human-evaluation rows")
    parser.add_argument("--output", type=Path, default=None, help="file to write (default: stdout)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    families = tuple(args.benchmark) if args.benchmark else None
    runs = load_runs(args.results)
    text = leaderboard(runs, args.format, families, args.paper_reference)
    usage = usage_table(runs, "csv", families) if args.format == "csv" else ""
    if args.output:
        args.output.write_text(text, "utf-8")
        if usage:
            beside = args.output.with_suffix(".usage.csv")
            beside.write_text(usage, "utf-8")
            print(f"token usage: {beside}", file=sys.stderr)
    else:
        print(text, end="")
        if usage:
            print("token usage: not in a CSV on stdout (one table per CSV); give --output FILE", file=sys.stderr)
    return 0
