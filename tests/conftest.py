"""Shared fixtures: the project's shared reference data and tiny offline models.

Tests read the real ESC-Eval cards and transcripts from the ``shared/`` folder that
sits beside the checkout (override with ``ESC_GUARD_SHARED``); the product never does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Tiny models on a shared 2-core machine run far faster on one thread (no oversubscription
# between torch's pool and other processes); set before any test imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ESC_GUARD_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def isolated_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Runs generate their dialogues unless a test opts into the store (tests/test_resume.py), and each test
    has a judge cache of its own: a store or cache shared across tests (or with the user's ``~/.cache``)
    would answer a rerun without calling the models it checks."""
    monkeypatch.setenv("ESC_EVAL_DIALOGUE_STORE", "none")
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "esc_guard_cache"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "reference" / "esc_eval_prompts.json").is_file():
        raise FileNotFoundError(f"shared reference data not found at {SHARED}; set ESC_GUARD_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def esc_data(shared: Path) -> Path:
    return shared / "data" / "esc_eval"


@pytest.fixture(scope="session")
def reference_prompts(shared: Path) -> dict:
    """The reference strings as the shared JSON holds them (independent of the package copy)."""
    return json.loads((shared / "reference" / "esc_eval_prompts.json").read_text("utf-8"))


@pytest.fixture(scope="session")
def transcripts(esc_data: Path) -> list:
    """All 12 upstream example dialogues (3 per file: two supporters × two languages)."""
    from esc_guard_tasks.esc_eval.protocol import Transcript

    loaded = []
    for path in sorted((esc_data / "result").glob("*/*.json")):
        language = "zh" if "zh" in path.name else "en"
        for key, lines in json.loads(path.read_text("utf-8")).items():
            loaded.append(Transcript.from_reference_lines(lines, int(key), language))
    assert len(loaded) == 12
    return loaded


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random chat model (ChatML template) built in code: seconds to load, offline."""
    from tiny_models import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")
