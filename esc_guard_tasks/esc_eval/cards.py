"""Role cards: fetch (pinned upstream commit) or read (local copy), validate strictly.

The 655 public high-quality cards live only in the reference repository (no hub
dataset exists). They are fetched through ``datasets``' cached downloader from the
pinned commit, or read from ``data_dir`` on air-gapped machines. Every record is
validated; a bad one raises an error naming the file and the record: nothing is
dropped silently.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from esc_guard_tasks.esc_eval.protocol import CARD_LANGUAGE, LANGUAGES, Card, Language
from esc_guard_tasks.esc_eval.settings import ESCSettings

UPSTREAM_REPO = "haidequanbu/ESC-Eval"
UPSTREAM_COMMIT = "9ad46e7b5e247e824dae4633910eaa82be668beb"
UPSTREAM_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{folder}/{file}"
# card_set → file name per language. "demo" cards are our own, shipped in the package.
CARD_FILES = {"high": "card_high_{language}.json", "demo": "card_demo_{language}.json"}


# The card id column is int64 in the ``datasets`` (Arrow) table every card goes through.
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


class CardError(ValueError):
    """A role-card file or record that cannot be used as is."""


def card_file_name(card_set: str, language: Language) -> str:
    if card_set not in CARD_FILES:
        raise CardError(f"unknown card_set {card_set!r}; expected one of {', '.join(CARD_FILES)}")
    return CARD_FILES[card_set].format(language=language)


def parse_cards(text: str, source: str, language: Language) -> list[Card]:
    """Validate a card file's JSON text; ``source`` names the file in every error."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise CardError(f"{source}: not valid JSON ({err})") from None
    except RecursionError:
        raise CardError(f"{source}: not usable JSON (nested too deeply)") from None
    if not isinstance(records, list):
        raise CardError(f"{source}: expected a JSON array of role cards, got {type(records).__name__}")
    cards: list[Card] = []
    seen: dict[int, int] = {}
    for index, record in enumerate(records):
        card = _parse_record(record, f"{source}: record {index}", language)
        if card.id in seen:
            raise CardError(f"{source}: record {index} repeats id {card.id} of record {seen[card.id]}")
        seen[card.id] = index
        cards.append(card)
    if not cards:
        raise CardError(f"{source}: contains no role cards")
    return cards


def _parse_record(record: Any, where: str, language: Language) -> Card:
    if not isinstance(record, dict):
        raise CardError(f"{where}: expected an object, got {type(record).__name__}")
    card_id = record.get("id")
    where = f"{where} (id {card_id})" if card_id is not None else where
    for key in ("base", "language", "id"):
        if key not in record:
            raise CardError(f"{where}: missing required field '{key}'")
    if isinstance(card_id, bool) or not isinstance(card_id, int):
        raise CardError(f"{where}: 'id' must be an integer, got {type(card_id).__name__}")
    if not ID_MIN <= card_id <= ID_MAX:
        raise CardError(f"{where}: 'id' must fit a signed 64-bit integer ({ID_MIN} to {ID_MAX}), the dataset's id type")
    base = record["base"]
    if not isinstance(base, str) or not base.strip():
        raise CardError(f"{where}: 'base' must be a non-empty string")
    for key in ("base", "source", "res"):
        if isinstance(record.get(key), str) and not _encodable(record[key]):
            raise CardError(f"{where}: '{key}' is not valid Unicode (a lone surrogate such as \\ud800)")
    if record["language"] != CARD_LANGUAGE[language]:
        raise CardError(
            f"{where}: 'language' is {record['language']!r}, expected {CARD_LANGUAGE[language]!r} for this file"
        )
    for key in ("source", "res"):
        if not isinstance(record.get(key, ""), str):
            raise CardError(f"{where}: '{key}' must be a string")
    return Card(id=card_id, language=language, base=base, source=record.get("source", ""), topic=record.get("res", ""))


def _encodable(text: str) -> bool:
    """False for strings JSON escapes can make but no model, tokenizer or HTTP body can carry (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_card_file(path: Path, language: Language) -> list[Card]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardError(f"{path}: role-card file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CardError(f"{path}: cannot read role-card file ({err})") from None
    return parse_cards(text, str(path), language)


def fetch_upstream(file_name: str, folder: str = "data") -> Path:
    """Download a file of the pinned upstream commit (cached by ``datasets``): a card file, or for the tests
    an example transcript (``folder="result/2024-06-24"``)."""
    from datasets.utils.file_utils import cached_path

    url = UPSTREAM_URL.format(repo=UPSTREAM_REPO, commit=UPSTREAM_COMMIT, folder=folder, file=file_name)
    try:
        return Path(cached_path(url))
    except Exception as err:  # noqa: BLE001 - offline, HTTP, proxy or cache errors all need the same advice
        raise CardError(
            f"could not fetch role cards from {url} ({type(err).__name__}: {err}). "
            "On a machine without access, copy data/card_high_en.json and data/card_high_zh.json of "
            f"{UPSTREAM_REPO}@{UPSTREAM_COMMIT[:7]} into a folder and set data_dir "
            '(--metadata \'{"data_dir": "/path"}\' or ESC_EVAL_DATA_DIR=/path).'
        ) from None


def load_cards(language: Language, card_set: str = "high", data_dir: str | os.PathLike | None = None) -> list[Card]:
    """The cards of one language: packaged demo cards, a local copy, or the pinned upstream files."""
    if language not in LANGUAGES:
        raise CardError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
    file_name = card_file_name(card_set, language)
    if card_set == "demo":
        demo = resources.files(__package__).joinpath("demo_cards").joinpath(file_name)
        return parse_cards(demo.read_text("utf-8"), f"demo card file {file_name}", language)
    if data_dir:
        return read_card_file(Path(data_dir) / file_name, language)
    return read_card_file(fetch_upstream(file_name), language)


def load_card_dataset(language: Language, card_set: str = "high", **metadata: Any):
    """lm-eval ``custom_dataset`` entry: called with task metadata and ``dataset_kwargs``.

    One row (doc) per dialogue: with ``trials`` > 1 each card gives ``trials`` rows in a row, card by card,
    each with its ``trial`` index (so ``--limit``/``--samples`` count dialogues; a multiple of ``trials`` keeps
    whole cards). With one trial the rows are the cards alone, exactly as before trials existed."""
    import datasets

    settings = ESCSettings.from_sources(metadata, os.environ)
    cards = load_cards(language, card_set, settings.data_dir)
    rows = [
        {"card_id": c.id, "language": c.language, "base": c.base, "source": c.source, "topic": c.topic} for c in cards
    ]
    if settings.trials > 1:
        rows = [row | {"trial": trial} for row in rows for trial in range(settings.trials)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def trial_of_doc(doc: dict[str, Any]) -> int:
    """The doc's trial index: 0 in a single-trial run, whose rows carry none."""
    return int(doc.get("trial", 0))


def card_from_doc(doc: dict[str, Any]) -> Card:
    """Inverse of the dataset row built above."""
    return Card(id=doc["card_id"], language=doc["language"], base=doc["base"], source=doc["source"], topic=doc["topic"])
