"""Role cards: real files load; every malformed file or record is an error naming file and record."""

from __future__ import annotations

import json

import pytest

from esc_guard_tasks.esc_eval import cards as cards_module
from esc_guard_tasks.esc_eval.cards import CardError, load_card_dataset, load_cards, parse_cards

GOOD = {"base": "Age: 30\nGender: Female", "res": "工作学习", "source": "ESconv", "language": "english", "id": 32025}


def test_real_cards_load(esc_data, esc_card_counts):
    """The real cards (the shared developer split, or the full upstream files) load completely with unique ids
    and the right language."""
    en, zh = load_cards("en", data_dir=esc_data), load_cards("zh", data_dir=esc_data)
    assert (len(en), len(zh)) == esc_card_counts
    assert len({c.id for c in en}) == esc_card_counts[0] and {c.language for c in en} == {"en"}
    assert {c.source for c in zh} == {"PsyQA", "smile"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "base"}, "record 1 \\(id 32025\\): missing required field 'base'"),
        ({k: v for k, v in GOOD.items() if k != "id"}, "record 1: missing required field 'id'"),
        ({k: v for k, v in GOOD.items() if k != "language"}, "missing required field 'language'"),
        (GOOD | {"id": "32025"}, "'id' must be an integer, got str"),
        (GOOD | {"id": True}, "'id' must be an integer, got bool"),
        (GOOD | {"base": 5}, "'base' must be a non-empty string"),
        (GOOD | {"base": "   "}, "'base' must be a non-empty string"),
        (GOOD | {"language": "chinese"}, "'language' is 'chinese', expected 'english'"),
        (GOOD | {"source": ["x"]}, "'source' must be a string"),
        ("not an object", "record 1: expected an object, got str"),
    ],
)
def test_bad_record_names_file_and_record(record, message):
    """Each kind of malformed record raises CardError with the file name and record index."""
    text = json.dumps([GOOD | {"id": 1}, record], ensure_ascii=False)
    with pytest.raises(CardError, match=message) as err:
        parse_cards(text, "cards.json", "en")
    assert str(err.value).startswith("cards.json: record 1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[{", "not valid JSON"),
        ('{"base": "x"}', "expected a JSON array"),
        ("[]", "contains no role cards"),
        (json.dumps([GOOD, GOOD]), "record 1 repeats id 32025 of record 0"),
    ],
)
def test_bad_file_is_rejected(text, message):
    """Whole-file problems (syntax, shape, emptiness, duplicate ids) are errors naming the file."""
    with pytest.raises(CardError, match=message):
        parse_cards(text, "cards.json", "en")


def test_missing_local_copy_names_the_path(tmp_path):
    """data_dir without the expected file names the exact path that was looked for."""
    with pytest.raises(CardError, match="card_high_zh.json: role-card file not found"):
        load_cards("zh", data_dir=tmp_path)


def test_invalid_utf8_names_the_file(tmp_path):
    """Undecodable bytes are a readable error naming the file, not a traceback from the decoder."""
    (tmp_path / "card_high_en.json").write_bytes(b'[{"base": "\xff"}]')
    with pytest.raises(CardError, match="card_high_en.json: cannot read"):
        load_cards("en", data_dir=tmp_path)


def test_unreachable_upstream_says_what_to_do(monkeypatch):
    """Without data_dir and without network, the error names the pinned URL and the data_dir setting."""

    def offline(url, *args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr("datasets.utils.file_utils.cached_path", offline)
    with pytest.raises(CardError) as err:
        load_cards("en")
    text = str(err.value)
    assert cards_module.UPSTREAM_COMMIT in text and "card_high_en.json" in text
    assert "data_dir" in text and "ESC_EVAL_DATA_DIR" in text


def test_upstream_fetch_reads_the_downloaded_file(monkeypatch, card_dir):
    """The pinned URL is what gets fetched, and the downloaded file goes through validation."""
    seen = []

    def fake_download(url, *args, **kwargs):
        seen.append(url)
        return str(card_dir / "card_high_en.json")

    monkeypatch.setattr("datasets.utils.file_utils.cached_path", fake_download)
    assert [c.id for c in load_cards("en")] == [32025, 32027, 32032]
    assert seen == [
        f"https://raw.githubusercontent.com/haidequanbu/ESC-Eval/{cards_module.UPSTREAM_COMMIT}/data/card_high_en.json"
    ]


def test_demo_cards_are_marked_and_separate():
    """Demo cards are our own (source says so, ids outside every upstream id range)."""
    for language in ("en", "zh"):
        demo = load_cards(language, card_set="demo")
        assert len(demo) >= 3
        assert {c.source for c in demo} == {"esc-guard-tasks demo"}
        assert all(str(c.id).startswith("9") for c in demo)


def test_dataset_reads_data_dir_from_environment(monkeypatch, esc_data, esc_card_counts):
    """custom_dataset resolves data_dir like every other key: --metadata, else ESC_EVAL_DATA_DIR."""
    monkeypatch.setenv("ESC_EVAL_DATA_DIR", str(esc_data))
    dataset = load_card_dataset(language="zh", pretrained="ignored-model-arg")
    assert dataset["test"].num_rows == esc_card_counts[1]
    assert dataset["test"][0]["card_id"] == 10000 and dataset["test"][0]["language"] == "zh"
