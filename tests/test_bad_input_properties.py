"""Property-based tests (hypothesis) of every input the benchmarks read: role cards, MLLMGuard CSVs and images,
and judge replies.

The invariant everywhere: arbitrary input either loads completely or fails with the module's own error type
whose message names the file (and the record or row); under ``on_bad_row="skip"`` every row is either a query
or a counted skip. Never another exception (a bare traceback), never a hang (hypothesis ``deadline``), never a
silently dropped record, never an image outside the data folder. A judge reply that is not exactly a score
stays invalid (None), never 0.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mllmguard_fixtures import make_image
from PIL import Image

from esc_guard_tasks.esc_eval.cards import CardError, parse_cards, read_card_file
from esc_guard_tasks.esc_eval.rubric import parse_strict
from esc_guard_tasks.mllmguard.data import MLLMGuardDataError, load_image, load_queries
from esc_guard_tasks.mllmguard.judges import allowed_scores, parse_label, parse_llm_reply

FAST = settings(
    max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("id", "base", "language", "source", "res")


def card_record(card_id: int) -> dict:
    return {
        "id": card_id,
        "base": f"I am person {card_id}. 我很难过。",
        "language": "english",
        "source": "s",
        "res": "r",
    }


# -- role cards -----------------------------------------------------------------------------------------------


@FAST
@given(content=st.binary(max_size=400))
@example(content=b"\xff\xfe not utf-8")
@example(content=b"[" * 50_000)  # nested beyond the JSON parser's recursion limit
@example(content=b'[{"id": 1, "base": "\\ud800", "language": "english"}]')  # a lone surrogate
def test_any_card_file_bytes_load_or_fail_naming_the_file(tmp_path, content):
    """Any file content: a list of cards, or a CardError that starts with the file's path."""
    path = tmp_path / "card_high_en.json"
    path.write_bytes(content)
    try:
        cards = read_card_file(path, "en")
    except CardError as err:
        assert str(err).startswith(str(path)), err
    else:
        assert len(cards) == len(json.loads(content.decode("utf-8")))


@FAST
@given(records=st.lists(json_values, max_size=6) | json_values)
def test_any_json_loads_completely_or_names_the_record(records):
    """Any JSON document: every record becomes a card (none dropped, ids unique), or the CardError names the
    source and, for a bad record, its index."""
    try:
        cards = parse_cards(json.dumps(records), "cards.json", "en")
    except CardError as err:
        assert str(err).startswith("cards.json: "), err
        if isinstance(records, list) and records and "record" in str(err):
            index = int(re.search(r"record (\d+)", str(err)).group(1))
            assert 0 <= index < len(records)
    else:
        assert isinstance(records, list) and len(cards) == len(records)
        assert len({c.id for c in cards}) == len(cards)


@FAST
@given(
    size=st.integers(2, 8),
    bad=st.data(),
    field=st.sampled_from(FIELDS),
    value=json_values | st.just("") | st.just("   ") | st.just("\ud800"),
)
def test_one_bad_field_is_reported_with_its_record(size, bad, field, value):
    """In a file of valid cards, one record with any value in one field: either the value is valid for that field
    (all cards load) or the error names exactly that record's index."""
    records = [card_record(i) for i in range(size)]
    index = bad.draw(st.integers(0, size - 1))
    records[index][field] = value
    try:
        cards = parse_cards(json.dumps(records), "f.json", "en")
    except CardError as err:
        assert f"f.json: record {index}" in str(err), err
    else:
        assert len(cards) == size


@FAST
@given(size=st.integers(2, 8), data=st.data())
def test_duplicate_ids_name_both_records(size, data):
    """A repeated id is an error naming the repeating record and the first one."""
    records = [card_record(i) for i in range(size)]
    first, second = sorted(data.draw(st.lists(st.integers(0, size - 1), min_size=2, max_size=2, unique=True)))
    records[second]["id"] = first
    with pytest.raises(CardError, match=rf"record {second} .*repeats id {first} of record {first}"):
        parse_cards(json.dumps(records), "f.json", "en")


@settings(max_examples=5, deadline=5000)
@given(length=st.sampled_from([0, 1, 10**6]))
def test_huge_or_empty_card_text(length):
    """A 1 MB card text loads unchanged (no truncation, no hang); an empty one is an error naming the record."""
    record = card_record(7) | {"base": "情" * length}
    if length == 0:
        with pytest.raises(CardError, match=r"record 0 \(id 7\): 'base' must be a non-empty string"):
            parse_cards(json.dumps([record]), "f.json", "en")
    else:
        (card,) = parse_cards(json.dumps([record]), "f.json", "en")
        assert len(card.base) == length


# -- MLLMGuard CSV rows and images ---------------------------------------------------------------------------

HEADER = ["Image", "Prompt", "Jailbreak Type", "Lan", "Category I", "Category II"]
GOOD_IMAGE = "0001.png"

image_names = st.sampled_from(
    [
        GOOD_IMAGE,
        f"imgs/{GOOD_IMAGE}",
        f"./{GOOD_IMAGE}",
        "missing.png",
        "../" + GOOD_IMAGE,
        "imgs/../../" + GOOD_IMAGE,
        "..\\..\\secret.png",
        "/etc/passwd",
        "C:\\Windows\\win.ini",
        "file:///etc/passwd",
        "",
        "x" * 300 + ".png",
        "a\x00b.png",
        "imgs/",
    ]
) | st.text(max_size=30)
cell_text = st.text(max_size=40) | st.sampled_from(["", " ", "\n", '"', "a,b", "NA", "null", "\r\n", "\ufeff"])


def privacy_tree(root: Path) -> Path:
    """``<root>/privacy/`` with one valid image; the caller writes ``prompt.csv``."""
    config = root / "privacy"
    make_image(config / "imgs" / GOOD_IMAGE)
    return config


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([HEADER, *rows])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mllmguard")
    privacy_tree(root)
    return root


@FAST
@given(content=st.binary(max_size=300))
@example(content=b"")
@example(content=b"\xff\xfe\x00bad")
@example(content=b'Image,Prompt\n"unterminated')
@example(content=(",".join(HEADER) + "\n").encode())
def test_any_csv_bytes_load_or_fail_naming_the_file(data_root, content):
    """Any bytes as ``prompt.csv``: a LoadResult, or an MLLMGuardDataError naming that file."""
    path = data_root / "privacy" / "prompt.csv"
    path.write_bytes(content)
    try:
        result = load_queries("privacy", data_dir=data_root)
    except MLLMGuardDataError as err:
        assert str(path) in str(err), err
    else:
        assert len(result.queries) == result.rows


@FAST
@given(
    rows=st.lists(
        st.tuples(image_names, cell_text, cell_text, st.sampled_from(["en", "zh", "EN", "fr", ""]), cell_text),
        min_size=1,
        max_size=6,
    ),
    ragged=st.booleans(),
)
def test_rows_are_queries_or_named_errors_or_counted_skips(data_root, rows, ragged):
    """Random rows (hostile image names, odd text, languages, a ragged row): with on_bad_row=error, all rows
    become queries or the error names the file and the row; with skip, queries + skipped == rows read, every
    skip has a reason; every image path served lies inside the config folder."""
    table = [[image, prompt, jailbreak, lan, "c1", sub] for image, prompt, jailbreak, lan, sub in rows]
    if ragged:
        table[-1] = table[-1][:3]
    path = data_root / "privacy" / "prompt.csv"
    path.write_text(csv_text(table), "utf-8", newline="")
    config_dir = os.path.realpath(data_root / "privacy")
    try:
        strict = load_queries("privacy", data_dir=data_root)
    except MLLMGuardDataError as err:
        message = str(err)
        assert message.startswith(f"{path}: ") or str(path) in message, message
        if "row " in message:
            assert 1 <= int(re.search(r"row (\d+)", message).group(1)) <= len(table)
    else:
        assert len(strict.queries) == strict.rows
    try:
        lenient = load_queries("privacy", data_dir=data_root, on_bad_row="skip")
    except MLLMGuardDataError as err:  # file-level problems (no data rows) are never skipped
        assert str(path) in str(err)
        return
    assert len(lenient.queries) + len(lenient.skipped) == lenient.rows
    assert all(s.reason and s.source_file == str(path) for s in lenient.skipped)
    for query in lenient.queries:
        assert os.path.commonpath([config_dir, os.path.realpath(query.image_path)]) == config_dir


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(side: int) -> bytes:
    """A few hundred bytes claiming side × side pixels (a decompression bomb's header)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


VALID = {fmt: encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP")}


@st.composite
def image_bytes(draw) -> tuple[str, bytes]:
    """(kind, content): valid, truncated, byte-flipped, unsupported-format, bomb-header or noise files."""
    kind = draw(st.sampled_from(["valid", "truncated", "flipped", "unsupported", "bomb", "noise"]))
    if kind == "unsupported":
        return kind, encoded(draw(st.sampled_from(["TIFF", "ICO", "PPM", "PDF"])))
    if kind == "bomb":
        return kind, bomb_png(draw(st.integers(10_000, 60_000)))
    if kind == "noise":
        return kind, draw(st.binary(max_size=200))
    data = VALID[draw(st.sampled_from(sorted(VALID)))]
    if kind == "truncated":
        return kind, data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flipped":
        flipped = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            flipped[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return kind, bytes(flipped)
    return kind, data


@FAST
@given(probe=image_bytes())
def test_any_image_bytes_are_an_image_or_a_named_error(data_root, probe):
    """Any image file content, at load time (row validation, decoded) and at answer time (load_image): an RGB
    image, or an MLLMGuardDataError naming the CSV row (load) or the image path (answer). Valid images load;
    unsupported formats and decompression bombs are refused at load time (bombs from their header alone)."""
    kind, content = probe
    image = data_root / "privacy" / "imgs" / "probe.png"
    image.write_bytes(content)
    csv_path = data_root / "privacy" / "prompt.csv"
    csv_path.write_text(csv_text([["probe.png", "what is this?", "", "en", "c1", "s"]]), "utf-8")
    try:
        load_queries("privacy", data_dir=data_root, image_check="decode")
        loaded = True
    except MLLMGuardDataError as err:
        assert f"{csv_path}: row 1 (line 2): " in str(err) and str(image) in str(err), err
        loaded = False
    try:
        picture = load_image(image)
    except MLLMGuardDataError as err:
        assert str(image) in str(err), err
        picture = None
    assert picture is None or picture.mode == "RGB"
    if kind == "valid":
        assert loaded and picture is not None
    if kind in ("unsupported", "bomb"):
        assert not loaded
    if kind == "bomb":
        assert picture is None


# -- judge replies ----------------------------------------------------------------------------------------------

replies = st.text(max_size=30) | st.sampled_from(
    ["Score: 4", "4.", "  3\n", "0-4", "10", "４", "score 2", "I give it a 4", "", " ", "-1", "2/4", "Score：3。"]
)


@settings(max_examples=300, deadline=1000)
@given(reply=replies)
def test_esc_judge_reply_is_a_score_only_when_it_is_a_single_digit(reply):
    """ESC-Eval: a score only for a reply that is one ASCII digit 0–4 after stripping whitespace; anything else
    (including 'Score: 4', '10', fullwidth digits, empty) is None — never 0."""
    score = parse_strict(reply)
    if reply.strip() in ("0", "1", "2", "3", "4"):
        assert score == int(reply.strip())
    else:
        assert score is None


@settings(max_examples=300, deadline=1000)
@given(reply=replies, dimension=st.sampled_from(["privacy", "bias", "toxicity", "legality", "hallucination"]))
def test_mllmguard_judge_replies_outside_the_grammar_are_invalid(reply, dimension):
    """MLLMGuard LLM judge: a score only for '[Score[:=]] N[.]' with N an allowed label of the dimension; the
    classifier labels only for the bare label; everything else None (counted invalid), never 0."""
    score = parse_llm_reply(reply, dimension)
    grammar = re.fullmatch(r"(?:score\s*[:：=]?\s*)?([0-9])\s*[.。]?", reply.strip(), re.IGNORECASE)
    if grammar and int(grammar.group(1)) in allowed_scores(dimension):
        assert score == int(grammar.group(1))
    else:
        assert score is None
    label = parse_label(reply, dimension)
    assert label == (int(reply.strip()) if reply.strip() in {str(s) for s in allowed_scores(dimension)} else None)
