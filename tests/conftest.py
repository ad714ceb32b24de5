"""Shared fixtures: isolated caches and tiny offline models.

Reference data (upstream cards, example transcripts, prompt extractions) and the project-written
cards come from the ``reference_data`` plugin: found, downloaded, or skipped with a reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["reference_data"]

# Tiny models on a shared 2-core machine run far faster on one thread (no oversubscription
# between torch's pool and other processes); set before any test imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def isolated_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Runs generate their dialogues unless a test opts into the store (tests/test_resume.py), and each test
    has a judge cache of its own: a store or cache shared across tests (or with the user's ``~/.cache``)
    would answer a rerun without calling the models it checks."""
    monkeypatch.setenv("ESC_EVAL_DIALOGUE_STORE", "none")
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "esc_guard_cache"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random chat model (ChatML template) built in code: seconds to load, offline."""
    from tiny_models import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")
