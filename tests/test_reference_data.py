"""The reference-data rule of the test suite: found, downloaded through the package's own downloader, else skipped
(or failed under ``ESC_GUARD_REQUIRE_REFERENCE_DATA=1``); tests that need no reference data never depend on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reference_data import UPSTREAM_FILES, download_esc_data

TESTS = Path(__file__).resolve().parent
PROBE = """
def test_needs_reference(reference_prompts):
    assert isinstance(reference_prompts, dict)


def test_needs_only_project_cards(card_dir):
    assert (card_dir / "card_high_en.json").is_file() and (card_dir / "card_high_zh.json").is_file()
"""


def run_probe(tmp_path: Path, shared: Path, require: bool) -> subprocess.CompletedProcess:
    """pytest on a two-test file with only the reference_data plugin, in a clean subprocess."""
    (tmp_path / "test_probe.py").write_text(PROBE, "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_GUARD_", "PYTEST_"))}
    env |= {"ESC_GUARD_SHARED": str(shared), "PYTHONPATH": str(TESTS)}
    if require:
        env["ESC_GUARD_REQUIRE_REFERENCE_DATA"] = "1"
    command = [sys.executable, "-m", "pytest", "-p", "reference_data", "-p", "no:cacheprovider", "-rs", "-q"]
    return subprocess.run(
        [*command, "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_reference_data_skips_with_the_fix_and_fails_when_required(tmp_path):
    """With an empty reference folder a test that needs reference data is skipped, naming the missing file and
    ESC_GUARD_SHARED; ESC_GUARD_REQUIRE_REFERENCE_DATA=1 makes it an error; a test on project cards still passes."""
    empty = tmp_path / "empty_shared"
    empty.mkdir()
    skipped = run_probe(tmp_path, empty, require=False)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "1 passed, 1 skipped" in skipped.stdout
    assert "esc_eval_prompts.json" in skipped.stdout and "ESC_GUARD_SHARED" in skipped.stdout
    required = run_probe(tmp_path, empty, require=True)
    assert required.returncode == 1, required.stdout + required.stderr
    assert "1 passed, 1 error" in required.stdout
    assert "ESC_GUARD_REQUIRE_REFERENCE_DATA=1" in required.stdout


def test_a_reference_folder_is_used_when_present(tmp_path):
    """ESC_GUARD_SHARED pointing at a folder with the extraction runs the test instead of skipping it."""
    shared = tmp_path / "shared"
    (shared / "reference").mkdir(parents=True)
    (shared / "reference" / "esc_eval_prompts.json").write_text("{}", "utf-8")
    result = run_probe(tmp_path, shared, require=True)
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout + result.stderr


def test_without_a_folder_the_pinned_upstream_files_come_from_the_package_downloader(tmp_path, monkeypatch):
    """The fallback asks the package's cached downloader for each file at the pinned commit (result/ at the
    repository root, cards under data/) and lays them out like the reference folder."""
    from esc_guard_tasks.esc_eval.cards import UPSTREAM_COMMIT

    served = tmp_path / "served"
    served.mkdir()
    seen = []

    def fake_download(url, *args, **kwargs):
        seen.append(url)
        path = served / str(len(seen))
        path.write_text(json.dumps(url), "utf-8")
        return str(path)

    monkeypatch.setattr("datasets.utils.file_utils.cached_path", fake_download)
    folder = download_esc_data(tmp_path / "esc_eval")
    prefix = f"https://raw.githubusercontent.com/haidequanbu/ESC-Eval/{UPSTREAM_COMMIT}/"
    assert seen == [prefix + relative for relative in UPSTREAM_FILES]
    assert json.loads((folder / "card_high_zh.json").read_text("utf-8")) == prefix + "data/card_high_zh.json"
    assert json.loads((folder / "result/2024-06-24/llama3_en.json").read_text("utf-8")) == (
        prefix + "result/2024-06-24/llama3_en.json"
    )


@pytest.mark.parametrize("language", ["en", "zh"])
def test_project_cards_have_the_ids_tests_name(card_dir, language):
    """card_dir holds three cards per language in upstream's schema with the upstream test-file ids."""
    from esc_guard_tasks.esc_eval.cards import load_cards

    ids = {"en": [32025, 32027, 32032], "zh": [10000, 10021, 10022]}[language]
    assert [card.id for card in load_cards(language, data_dir=card_dir)] == ids
