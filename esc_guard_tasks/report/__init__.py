"""``esc-guard report``: ESC-Eval and MLLMGuard results beside a model's other results, in one leaderboard,
as a self-contained HTML report, and judge–human agreement.

One module per command (``merge``, ``table``, ``html``, ``agreement``); ``results`` reads the harnesses'
files and our logged samples, ``stats`` holds the bootstrap used for every interval.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Any

COMMANDS = {
    "merge": "add our tasks' rows to an existing lm-eval/lmms-eval results file of the same model",
    "table": "leaderboard across models and runs (Markdown, CSV, LaTeX)",
    "html": "self-contained HTML report: charts with bootstrap CIs, breakdowns, sample browser",
    "agreement": "judge vs human labels: ACC, ACC_soft, Pearson, Spearman, Krippendorff's alpha",
}


def add_command(commands: Any, name: str, help_text: str, module: ModuleType) -> None:
    """Register a subcommand whose module brings its arguments (``add_arguments``) and its ``--help`` text (the
    module docstring, shown as written). ``commands``: an ``add_subparsers()`` result."""
    module.add_arguments(
        commands.add_parser(
            name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``report <command>``; each command module brings its own arguments and ``run``."""
    commands = parser.add_subparsers(dest="report_command", required=True)
    for name, help_text in COMMANDS.items():
        add_command(commands, name, help_text, importlib.import_module(f"{__name__}.{name}"))
