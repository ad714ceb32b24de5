"""The ``lmms_eval`` console script: lmms-eval's own CLI with the same arguments, non-zero when an evaluation fails.

The first tests run anywhere (no lmms-eval, or a stand-in package shaped like lmms-eval 0.7.3's CLI); the ``lmms``
ones run the real lmms-eval in its venv (``.venv-lmms/bin/pytest -m lmms tests/test_lmms_eval_cli.py``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HAS_LMMS = importlib.util.find_spec("lmms_eval") is not None
BIN = Path(sys.executable).parent
# lmms-eval 0.7.3's shape: the dispatcher hands flat arguments to __main__.cli_evaluate, which calls
# cli_evaluate_single per configuration and logs (does not raise) what it raised.
STAND_IN = {
    "lmms_eval/__init__.py": "",
    "lmms_eval/cli/__init__.py": "",
    "lmms_eval/__main__.py": """
import sys


def cli_evaluate_single(args):
    if "--fail" in args:
        raise ValueError("no such model")
    print("evaluated", *args)
    return {"results": {}}, None


def cli_evaluate():
    try:
        cli_evaluate_single(sys.argv[1:])
    except Exception as err:
        print(f"Error during evaluation: {err}")
""",
    "lmms_eval/cli/dispatch.py": """
def main():
    from lmms_eval.__main__ import cli_evaluate

    cli_evaluate()
""",
}


def run(command: str, *args: str, path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    return subprocess.run([str(BIN / command), *args], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.skipif(HAS_LMMS, reason="lmms-eval is installed here: the install hint is for machines without it")
def test_without_lmms_eval_one_line_names_the_install_and_exits_non_zero():
    """Without lmms-eval, ``lmms_eval`` prints exactly one line with the pip command and exits non-zero."""
    result = run("lmms_eval", "--model", "hf_image_text", "--tasks", "mllmguard_privacy")
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert 'pip install "esc-guard-tasks[lmms]"' in result.stderr


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    for relative, text in STAND_IN.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, "utf-8")
    return tmp_path


@pytest.mark.skipif(HAS_LMMS, reason="the real lmms-eval would shadow the stand-in; the lmms tests cover it")
def test_a_swallowed_evaluation_error_becomes_a_non_zero_exit(stand_in):
    """An evaluation that raises inside lmms-eval's catch-all exits 1 (the error still printed by lmms-eval);
    one that returns exits 0 with lmms-eval's output and arguments unchanged."""
    failed = run("lmms_eval", "--model", "x", "--fail", path=stand_in)
    assert failed.returncode == 1
    assert "Error during evaluation: no such model" in failed.stdout
    assert "ValueError: no such model" in failed.stderr
    passed = run("lmms_eval", "--model", "x", "--tasks", "y", path=stand_in)
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.strip() == "evaluated --model x --tasks y"


@pytest.mark.lmms
@pytest.mark.skipif(not HAS_LMMS, reason="lmms-eval is not installed here: run scripts/setup_lmms.sh")
def test_real_lmms_eval_unknown_model_fails_where_lmms_eval_exits_zero(tmp_path):
    """With lmms-eval 0.7.3 an unknown model name makes ``lmms-eval`` log the error and exit 0; ``lmms_eval`` with
    the same arguments exits 1 and names the failure."""
    args = ["--model", "no_such_model_xyz", "--tasks", "mllmguard_privacy", "--limit", "1"]
    args += ["--output_path", str(tmp_path)]
    theirs = run("lmms-eval", *args)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    ours = run("lmms_eval", *args)
    assert ours.returncode == 1, ours.stderr[-2000:]
    assert "evaluation(s) failed" in ours.stderr and "no_such_model_xyz" in ours.stdout + ours.stderr


@pytest.mark.lmms
@pytest.mark.skipif(not HAS_LMMS, reason="lmms-eval is not installed here: run scripts/setup_lmms.sh")
def test_real_lmms_eval_task_list_succeeds_and_shows_our_tasks():
    """``lmms_eval --tasks list`` runs lmms-eval's own listing, exits 0 and lists the MLLMGuard tasks."""
    result = run("lmms_eval", "--tasks", "list")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mllmguard_privacy" in result.stdout + result.stderr
