"""``esc-guard report``: ESC-Eval and MLLMGuard results beside a model's other results, in one leaderboard,
as a self-contained HTML report, and judge–human agreement.

One module per command (``merge``, ``table``, ``html``, ``agreement``); ``results`` reads the harnesses'
files and our logged samples, ``stats`` holds the bootstrap used for every interval.
"""

from __future__ import annotations

import argparse
import importlib

COMMANDS = {
    "merge": "add our tasks' rows to an existing lm-eval/lmms-eval results file of the same model",
    "table": "leaderboard across models and runs (Markdown, CSV, LaTeX)",
    "html": "self-contained HTML report: charts with bootstrap CIs, breakdowns, sample browser",
    "agreement": "judge vs human labels: ACC, ACC_soft, Pearson, Spearman, Krippendorff's alpha",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``report <command>``; each command module brings its own arguments and ``run``."""
    commands = parser.add_subparsers(dest="report_command", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_arguments(
            commands.add_parser(
                name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
            )
        )
