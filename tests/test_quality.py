"""Project-wide guarantees that are cheap to check on every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import esc_guard_tasks

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    """The code base stays lint-clean (ruff.toml) and formatted."""
    ruff = str(Path(sys.executable).parent / "ruff")
    for command in ([ruff, "check", "."], [ruff, "format", "--check", "."]):
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_no_remote_code_anywhere():
    """No installed source enables trust_remote_code: hub code would run unreviewed."""
    package = Path(esc_guard_tasks.__file__).parent
    offenders = [
        str(path)
        for path in package.rglob("*")
        if path.suffix in {".py", ".yaml", ".json"} and "trust_remote_code=True" in path.read_text("utf-8")
    ]
    assert offenders == []
