"""Where tests get upstream reference data, and the project-written cards every other test uses.

A pytest plugin (``conftest.py`` loads it; ``pytest -p reference_data`` loads it on its own). Reference data
is looked up in this order:

1. ``$ESC_GUARD_SHARED`` or the ``shared/`` folder beside the checkout (the project's reference folder);
2. for the ESC-Eval cards and example transcripts only: the same files of the reference repository at the
   pinned commit the package itself downloads, through the package's own downloader and cache
   (``esc_guard_tasks.esc_eval.cards.fetch_upstream``), when the network allows;
3. else the test is skipped with a reason naming what is missing and how to provide it; with
   ``ESC_GUARD_REQUIRE_REFERENCE_DATA=1`` (set by ``.ci/run``) it fails instead, so CI never loses a test.

The upstream prompt/template extractions (``reference/esc_eval_prompts.json``, ``mllmguard_templates.json``,
``esc_eval.md``) and the MLLMGuard noise-injection CSV exist only in the project's reference folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ESC_GUARD_SHARED", REPO.parent / "shared"))
REQUIRE = "ESC_GUARD_REQUIRE_REFERENCE_DATA"
HOW = (
    "set ESC_GUARD_SHARED to a folder holding the project's reference data (reference/, data/esc_eval/, "
    "data/mllmguard/) or put it in shared/ beside the checkout"
)
# The ESC-Eval reference repository's files the tests read, by repository path (cards and example transcripts).
UPSTREAM_FILES = (
    "data/card_high_en.json",
    "data/card_high_zh.json",
    "data/test_en.json",
    "data/test_zh.json",
    *(f"result/2024-06-24/{model}_{language}.json" for model in ("Qwen_7B", "llama3") for language in ("en", "zh")),
)
# Card counts per language: the project's developer split (the rest is held out) and the full upstream files.
CARD_COUNTS = {"shared": (264, 260), "upstream": (331, 324)}


def missing(what: str, how: str = HOW) -> NoReturn:
    """Skip (or, under ``ESC_GUARD_REQUIRE_REFERENCE_DATA=1``, fail) a test whose reference data is absent."""
    reason = f"reference data not found: {what}; {how}"
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} ({REQUIRE}=1 turns this skip into a failure)", pytrace=False)
    pytest.skip(reason)


def shared_file(relative: str) -> Path:
    """A file that exists only in the project's reference folder (an extraction of ours, or held-back data)."""
    path = SHARED / relative
    if not path.is_file():
        missing(f"{relative} (only in the project's reference folder, looked for {path})")
    return path


def download_esc_data(folder: Path) -> Path:
    """The pinned upstream files laid out like ``shared/data/esc_eval`` (copied from the package's download cache).

    Raises ``CardError`` naming the URL when a file cannot be fetched."""
    from esc_guard_tasks.esc_eval.cards import fetch_upstream

    for relative in UPSTREAM_FILES:
        upstream_folder, name = relative.rsplit("/", 1)
        target = folder / relative.removeprefix("data/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fetch_upstream(name, upstream_folder), target)
    return folder


@pytest.fixture(scope="session")
def esc_data_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(folder, origin): the shared ESC-Eval data (``"shared"``) or the pinned upstream files (``"upstream"``)."""
    local = SHARED / "data" / "esc_eval"
    if (local / "card_high_en.json").is_file():
        return local, "shared"
    from esc_guard_tasks.esc_eval.cards import UPSTREAM_COMMIT, UPSTREAM_REPO, CardError

    try:
        return download_esc_data(tmp_path_factory.mktemp("esc_eval_upstream")), "upstream"
    except CardError as err:
        missing(
            f"ESC-Eval role cards and example transcripts (no {local}, and the download of "
            f"{UPSTREAM_REPO}@{UPSTREAM_COMMIT[:7]} failed: {str(err).split(' (')[0]})",
            f"{HOW}, or allow access to raw.githubusercontent.com",
        )


@pytest.fixture(scope="session")
def esc_data(esc_data_source: tuple[Path, str]) -> Path:
    """A folder with ``card_high_{en,zh}.json``, ``test_{en,zh}.json`` and ``result/2024-06-24/*.json``."""
    return esc_data_source[0]


@pytest.fixture(scope="session")
def esc_card_counts(esc_data_source: tuple[Path, str]) -> tuple[int, int]:
    """(EN, ZH) number of cards in ``esc_data``: the developer split or the full upstream files."""
    return CARD_COUNTS[esc_data_source[1]]


@pytest.fixture(scope="session")
def shared() -> Path:
    """The project's reference folder, for tests that read its extractions (``reference/…``) or held-back data."""
    shared_file("reference/esc_eval_prompts.json")
    return SHARED


@pytest.fixture(scope="session")
def reference_prompts() -> dict:
    """The reference strings as the shared JSON holds them (independent of the package copy)."""
    return json.loads(shared_file("reference/esc_eval_prompts.json").read_text("utf-8"))


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


# The upstream test-file ids, so tests can name the cards they expect; the texts are the project's demo cards.
CARD_IDS = {"en": (32025, 32027, 32032), "zh": (10000, 10021, 10022)}


@pytest.fixture(scope="session")
def card_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``data_dir`` written by the project: ``card_high_{en,zh}.json`` with three cards each, in upstream's schema.

    For tests that need some role cards, not the real ones: they run on a fresh clone without reference data."""
    from importlib import resources

    folder = tmp_path_factory.mktemp("cards")
    demo = resources.files("esc_guard_tasks.esc_eval").joinpath("demo_cards")
    for language, ids in CARD_IDS.items():
        records = json.loads(demo.joinpath(f"card_demo_{language}.json").read_text("utf-8"))
        if len(records) < len(ids):
            raise ValueError(f"card_demo_{language}.json has {len(records)} demo cards; the fixture needs {len(ids)}")
        cards = [record | {"id": card_id} for record, card_id in zip(records, ids, strict=False)]
        (folder / f"card_high_{language}.json").write_text(json.dumps(cards, ensure_ascii=False, indent=4), "utf-8")
    return folder
