"""What ``esc-guard`` tells a newcomer: its version, a description of every command and option, and why a report
table of an unjudged run is empty."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from harness_runs import run_cli, tiny_args

import esc_guard_tasks
from esc_guard_tasks.cli import main


def test_version_prints_the_package_version():
    """``esc-guard --version`` prints the one version the package declares (also the installed metadata's)."""
    from importlib.metadata import version

    result = subprocess.run(
        [str(Path(sys.executable).with_name("esc-guard")), "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"esc-guard {esc_guard_tasks.__version__}"
    assert version("esc-guard-tasks") == esc_guard_tasks.__version__


def parsers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the command tree, by command path, as ``main`` builds it."""
    built: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        built.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        main([])
    found, todo = [], [("esc-guard", built[0])]
    while todo:
        name, parser = todo.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {command}", sub) for command, sub in action.choices.items()]
    return found


def test_every_command_and_option_has_help_text(monkeypatch):
    """``esc-guard --help`` describes every command (each subcommand has a help line) and every option and
    positional argument of every command has help text."""
    tree = parsers(monkeypatch)
    assert {"esc-guard demo", "esc-guard rescore", "esc-guard report table"} <= {name for name, _ in tree}
    missing = []
    for name, parser in tree:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest for choice in action._choices_actions}
                missing += [f"{name} {c} (command)" for c in action.choices if c not in listed]
                missing += [f"{name} {c.dest} (command)" for c in action._choices_actions if not c.help]
            elif not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"no help text: {missing}"


def test_report_table_of_an_unjudged_run_says_there_was_no_judge(tiny_model, tmp_path):
    """``report table`` on a judge=none run (what ``esc-guard demo`` writes) names the missing judge and points at
    ``report html`` for the transcripts, and that command renders them."""
    run = run_cli(
        [*tiny_args(tiny_model, tasks="esc_eval_demo", limit=1, rounds=1), "--apply_chat_template", "--log_samples"],
        tmp_path / "demo",
    )
    (results,) = run.output.glob("**/results_*.json")
    samples = sorted(run.output.glob("**/samples_*.jsonl"))
    with pytest.raises(SystemExit) as raised:
        main(["report", "table", str(results)])
    message = str(raised.value.code)
    assert "no ESC-Eval or MLLMGuard rows" in message
    assert "without a judge" in message and "esc-guard report html" in message
    page = tmp_path / "report.html"
    assert main(["report", "html", str(results), "--samples", *map(str, samples), "--output", str(page)]) == 0
    card_id = run.transcripts("esc_eval_demo_en")[0]["card_id"]
    assert f"card {card_id} (en)" in page.read_text("utf-8")
