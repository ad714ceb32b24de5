"""What the test script promises a newcomer: the browser install can be skipped, and the fast lane's switch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import report_fixtures

TEST_SH = Path(__file__).resolve().parents[1] / "scripts" / "test.sh"


@pytest.mark.parametrize(("required", "outcome"), [("0", pytest.skip.Exception), ("1", pytest.fail.Exception)])
def test_browser_tests_skip_unless_the_browser_is_required(monkeypatch, required, outcome):
    """Without Chromium the report's browser tests skip under ESC_GUARD_BROWSER_REQUIRED=0 (what
    `scripts/test.sh --quick` and a user who declines the apt-get install get) and fail under =1 (CI)."""
    monkeypatch.setattr(report_fixtures.shutil, "which", lambda name: None)
    monkeypatch.setenv("ESC_GUARD_BROWSER_REQUIRED", required)
    with pytest.raises(outcome):
        report_fixtures.chromium()


def test_test_script_names_its_options_and_refuses_unknown_ones():
    """`scripts/test.sh` says in its output and header what it installs through apt-get and how to skip it, and
    refuses an unknown option before installing anything."""
    result = subprocess.run(["bash", str(TEST_SH), "--bogus"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage: scripts/test.sh [--quick]" in result.stderr
    text = TEST_SH.read_text("utf-8")
    assert "ESC_GUARD_BROWSER_REQUIRED=0" in text and "apt-get" in text and "--quick" in text


def test_the_readme_and_ci_scripts_are_executable():
    """The README's two commands and `.ci/run` call the scripts directly (`scripts/test.sh`, not `bash …`): a
    commit that drops a script's executable bit breaks a fresh clone and CI with 'Permission denied'."""
    repo = TEST_SH.parents[1]
    scripts = [repo / ".ci" / "run", *sorted((repo / "scripts").glob("*.sh"))]
    assert len(scripts) >= 5
    assert [path.name for path in scripts if not os.access(path, os.X_OK)] == []
