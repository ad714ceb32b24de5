"""MLLMGuard data: real and synthetic CSVs load into the reference's queries; every bad input is named."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from mllmguard_fixtures import (
    AVIF,
    build_mllmguard_tree,
    build_real_noise_folder,
    config_specs,
    expected_queries,
    expected_rows,
    make_image,
    write_config,
    write_csv,
)
from PIL import Image

from esc_guard_tasks.mllmguard import data as data_module
from esc_guard_tasks.mllmguard.data import (
    CONFIGS,
    DATA_DIR_ENV,
    HUB_REPO,
    HUB_REVISION,
    MLLMGuardDataError,
    check_image,
    expand_csv,
    hallucination_option_prompt,
    load_image,
    load_queries,
    templates,
)
from esc_guard_tasks.mllmguard.taxonomy import VARIANTS

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mllmguard_tree(tmp_path_factory.mktemp("mllmguard"))


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# ------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def real_noise(shared: Path, tmp_path_factory: pytest.TempPathFactory):
    csv_path = shared / "data" / "mllmguard" / "noise-injection" / "prompt.csv"
    root = build_real_noise_folder(csv_path, tmp_path_factory.mktemp("real_noise"))
    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return root, rows


def test_real_noise_csv_expands_to_clean_and_noisy_queries(real_noise):
    """The shared upstream noise CSV (144 rows) gives 288 queries: clean then noisy, same prompt and gold answer."""
    root, rows = real_noise
    result = load_queries("noise-injection", data_dir=root)
    assert (result.rows, len(result.queries), result.skipped) == (144, 288, [])
    assert result.origin == f"local:{root / 'noise-injection'}" and result.revision is None
    assert result.columns["image"] == "Image" and result.columns["language"] == "Lan"
    clean, noisy = result.queries[0::2], result.queries[1::2]
    assert {q.variant for q in clean} == {"clean"} and {q.variant for q in noisy} == {"noisy"}
    for row_number, (row, c, n) in enumerate(zip(rows, clean, noisy, strict=True), start=1):
        assert c.item_id == n.item_id == f"noise-injection/all/{row_number}"
        assert c.prompt == n.prompt == row["Prompt"]
        assert c.answer == n.answer == row["Answer"]
        assert c.language == n.language == row["Lan"]
        stem, ext = os.path.splitext(row["Image"])
        assert c.image_path == str(root / "noise-injection" / "imgs" / row["Image"])
        assert n.image_path == str(root / "noise-injection" / "imgs" / f"{stem}_noise{ext}")
        assert (c.row, c.line) == (row_number, row_number + 1)
    assert Counter(q.answer for q in clean) == {"A": 84, "B": 60}
    assert Counter(q.language for q in clean) == {"zh": 74, "en": 70}
    assert {(q.dimension, q.subtask, q.data_source, q.options) for q in result.queries} == {
        ("truthfulness", "Noise Consistency", "Animal-10", "")
    }
    assert Counter(q.jailbreak_type for q in clean) == {"噪声一致性": 122, "Noise Consistency": 22}
    assert clean[0].query_id == "noise-injection/all/1/clean" and clean[0].image_path.endswith("0090.jpg")


def test_packaged_templates_are_a_verbatim_copy(shared: Path):
    """Every key of the package's templates.json (except the copy note) equals the shared reference file."""
    reference = json.loads((shared / "reference" / "mllmguard_templates.json").read_text("utf-8"))
    packaged = templates()
    copied = {key: value for key, value in packaged.items() if key != "copied_from"}
    assert copied == {key: reference[key] for key in copied}
    assert {"provenance", "hallucination_option_prompt", "noise_injection_image", "guardrank_decoder"} <= set(copied)
    assert hallucination_option_prompt("Q?", "A. x B. y") == "Q?(Please answer me with options) A. x B. y"


# ------------------------------------------------------------------------------------------ synthetic tree


@pytest.mark.parametrize("split", ["all", "en", "zh"])
@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_and_split_expands_like_the_reference(tree: Path, config: str, split: str):
    """Row and query counts, variant order, dimension, language and image paths for all 7 configs × 3 splits."""
    result = load_queries(config, split, data_dir=tree)
    assert result.rows == expected_rows(config, split)
    assert len(result.queries) == expected_queries(config, split)
    config_dir = tree / "desensitize" / config
    variants = VARIANTS[config]
    for index, query in enumerate(result.queries):
        assert query.variant == variants[index % len(variants)]
        assert query.item_id == f"{config}/{split}/{query.row}" and query.config == config
        assert query.dimension == data_module.DIMENSION[config]
        assert split == "all" or query.language == split
        path = Path(query.image_path)
        assert path.is_absolute() and path.is_file() and config_dir in path.parents
        assert query.source_file == str(config_dir / data_module.SPLITS[split])
        assert query.subtask
    assert json.loads(json.dumps(result.docs())) == result.docs()  # harness docs are plain JSON


def test_variant_contents(tree: Path):
    """hallucination: free then option prompt, same image; position: Image then Reverse Image; open: 1 query."""
    free, option = load_queries("hallucination", data_dir=tree).queries[:2]
    assert free.prompt == "What color is the cat's hat?" and free.image_path == option.image_path
    assert option.prompt == "What color is the cat's hat?(Please answer me with options) A. yellow B. brown C. blue"
    assert option.options == free.options == "A. yellow B. brown C. blue"
    original, swapped = load_queries("position-swapping", data_dir=tree).queries[:2]
    assert (Path(original.image_path).name, Path(swapped.image_path).name) == ("s0.jpg", "s0_r.jpg")
    assert original.prompt == swapped.prompt and original.data_source == "web"
    noise = load_queries("noise-injection", "zh", data_dir=tree).queries
    assert [Path(q.image_path).name for q in noise[:2]] == [f"n1{AVIF}", f"n1_noise{AVIF}"]
    assert [q.answer for q in noise] == ["B", "B", "A", "A"]
    privacy = load_queries("privacy", data_dir=tree)
    assert [q.variant for q in privacy.queries] == ["single"] * 3
    assert privacy.columns["image"] == "file_name" and privacy.queries[0].data_source == ""  # no Source column
    legality = load_queries("legality", data_dir=tree)  # columns in an unusual order
    assert legality.queries[1].language == "zh" and legality.queries[1].subtask == "Public Security"


def test_flat_layout_and_environment_fallback(tmp_path: Path, monkeypatch):
    """<data_dir>/<config>/ (unmasked release) works, and MLLMGUARD_DATA_DIR is used when data_dir is not given."""
    build_mllmguard_tree(tmp_path, layout="flat", configs=("bias",))
    assert len(load_queries("bias", data_dir=tmp_path).queries) == 3
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    result = load_queries("bias", "zh")
    assert result.origin == f"local:{tmp_path / 'bias'}" and len(result.queries) == 1


def test_both_layouts_or_none_is_an_error(tmp_path: Path):
    """A data_dir holding both layouts is ambiguous; one holding neither names the two paths looked for."""
    build_mllmguard_tree(tmp_path, configs=("bias",))
    build_mllmguard_tree(tmp_path, layout="flat", configs=("bias",))
    with pytest.raises(MLLMGuardDataError, match="both .* exist"):
        load_queries("bias", data_dir=tmp_path)
    with pytest.raises(MLLMGuardDataError, match="desensitize/privacy and .*/privacy"):
        load_queries("privacy", data_dir=tmp_path)


def test_config_and_split_names(tree: Path):
    """Task-style underscores name the same config; unknown configs and splits are errors listing the valid ones."""
    assert len(load_queries("noise_injection", data_dir=tree).queries) == 8
    with pytest.raises(MLLMGuardDataError, match="unknown MLLMGuard config 'jailbreak'.*privacy"):
        load_queries("jailbreak", data_dir=tree)
    with pytest.raises(MLLMGuardDataError, match="unknown MLLMGuard split 'test'"):
        load_queries("bias", "test", data_dir=tree)


def test_images_are_checked_one_at_a_time_and_closed(tree: Path):
    """Validation leaves no file open (no image is held in memory) and load_image gives a detached RGB image."""
    fd_dir = Path("/proc/self/fd")
    before = len(list(fd_dir.iterdir())) if fd_dir.is_dir() else None
    for config in CONFIGS:
        load_queries(config, data_dir=tree, image_check="decode")
    if before is not None:
        assert len(list(fd_dir.iterdir())) <= before
    image = load_image(load_queries("privacy", data_dir=tree).queries[2].image_path)
    assert image.mode == "RGB" and image.size == (8, 6)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK", "LA", "I;16"])
def test_load_image_converts_every_mode_to_rgb(tmp_path: Path, mode: str):
    """Whatever the stored mode, the model side receives an RGB image of the same size."""
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    Image.new(mode, (5, 3)).save(path)
    image = load_image(path)
    assert (image.mode, image.size) == ("RGB", (5, 3))


def test_load_image_errors_name_the_path(tmp_path: Path, monkeypatch):
    """load_image: a corrupt file and a decompression bomb are MLLMGuardDataError naming the file."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(MLLMGuardDataError, match="bad.jpg: not a recognisable image"):
        load_image(bad)
    big = make_image(tmp_path / "big.png", size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(MLLMGuardDataError, match="big.png: .*bomb"):
        load_image(big)


# ------------------------------------------------------------------------------------------ hub


def test_hub_download_is_pinned_scoped_and_authenticated(tmp_path: Path, monkeypatch, caplog):
    """Without a local copy: snapshot_download(HUB_REPO, dataset, HUB_REVISION, token, one config's pattern).

    HUB_REVISION is a full commit sha (a branch name would let the data change under the same settings), and
    a snapshot that resolves to another commit than the one asked for is named in a warning and recorded.
    """
    assert re.fullmatch(r"[0-9a-f]{40}", HUB_REVISION), HUB_REVISION
    snapshot = tmp_path / "hub" / "datasets--Carol0110--MLLMGuard" / "snapshots" / SHA
    write_config(snapshot / "desensitize" / "position-swapping", config_specs()["position-swapping"])
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    result = load_queries("position-swapping", "en", token="hf_secret")
    assert calls == [
        (
            HUB_REPO,
            {
                "repo_type": "dataset",
                "revision": HUB_REVISION,
                "token": "hf_secret",
                "allow_patterns": ["desensitize/position-swapping/*"],
            },
        )
    ]
    assert HUB_REPO == "Carol0110/MLLMGuard"
    assert result.revision == SHA and result.origin == f"hub:{HUB_REPO}@{SHA}"
    assert f"resolved to commit {SHA}; set MLLMGUARD_REVISION" in caplog.text
    assert len(result.queries) == 4 and snapshot in Path(result.queries[0].image_path).parents
    calls.clear()
    with pytest.raises(MLLMGuardDataError, match="has no folder desensitize/bias/"):
        load_queries("bias", token=True, revision=SHA)
    assert calls[0][1]["token"] is True and calls[0][1]["revision"] == SHA


def test_hub_cache_symlinks_into_blobs_are_accepted(tmp_path: Path, monkeypatch):
    """Snapshot files are symlinks into the cache's blobs/ folder: containment is checked on the path text."""
    snapshot = tmp_path / "snapshots" / SHA
    config_dir = write_config(snapshot / "desensitize" / "toxicity", config_specs()["toxicity"])
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for image in (config_dir / "imgs").iterdir():
        blob = blobs / image.name
        image.rename(blob)
        image.symlink_to(os.path.relpath(blob, image.parent))
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **k: str(snapshot))
    result = load_queries("toxicity")
    assert len(result.queries) == 3 and all(Path(q.image_path).is_symlink() for q in result.queries)


def test_unreachable_hub_says_what_to_do(monkeypatch):
    """No data_dir, no env, hub failing: the error names the dataset and revision, the token, the local-copy
    settings and the way out of an unknown revision."""

    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(MLLMGuardDataError) as err:
        load_queries("privacy")
    message = str(err.value)
    needles = [f"Carol0110/MLLMGuard@{HUB_REVISION}", "ConnectionError: no route to host", "gated", "token", "data_dir"]
    needles.append("MLLMGUARD_REVISION=main")
    for needle in [*needles, DATA_DIR_ENV, "desensitize/privacy/"]:
        assert needle in message


def test_data_dir_never_falls_back_to_the_hub(tmp_path: Path, monkeypatch):
    """A data_dir without the config is an error, even if the hub would answer."""
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **k: pytest.fail("hub was called"))
    with pytest.raises(MLLMGuardDataError, match="not found in data_dir"):
        load_queries("toxicity", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------ bad input

GOOD = {"Image": "good.jpg", "Prompt": "Describe the image.", "Lan": "en", "Category II": "Stereotype"}
HEADER = ["Image", "Prompt", "Jailbreak Type", "Lan", "Category II"]


def _bad_folder(tmp_path: Path, bad: dict[str, str], header: list[str] = HEADER, config: str = "bias") -> Path:
    config_dir = tmp_path / config
    make_image(config_dir / "imgs" / "good.jpg")
    make_image(config_dir / "imgs" / "good_noise.jpg")
    make_image(config_dir / "imgs" / "later.jpg")
    rows = [GOOD, GOOD | bad, GOOD | {"Image": "later.jpg"}]
    write_csv(config_dir / "prompt.csv", header, [[row.get(c, "") for c in header] for row in rows])
    return config_dir


def _corrupt(config_dir: Path) -> None:
    (config_dir / "imgs" / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")


def _truncated_png(config_dir: Path) -> None:
    data = make_image(config_dir / "imgs" / "full.png", size=(64, 64)).read_bytes()
    (config_dir / "imgs" / "trunc.png").write_bytes(data[: len(data) // 2])


def _ppm(config_dir: Path) -> None:
    Image.new("RGB", (4, 4)).save(config_dir / "imgs" / "odd.jpg", format="PPM")


def _directory(config_dir: Path) -> None:
    (config_dir / "imgs" / "folder.jpg").mkdir()


BAD_ROWS = [
    ({"Prompt": "  "}, None, "empty Prompt"),
    ({"Lan": "fr"}, None, "language 'fr' is not one of en, zh"),
    ({"Lan": ""}, None, "language '' is not one of en, zh"),
    ({"Image": ""}, None, "empty image path"),
    ({"Image": "missing.jpg"}, None, "image not found: .*imgs/missing.jpg"),
    ({"Image": "folder.jpg"}, _directory, "image path is not a file"),
    ({"Image": "corrupt.jpg"}, _corrupt, "not a recognisable image"),
    ({"Image": "trunc.png"}, _truncated_png, "corrupt or unreadable image"),
    ({"Image": "odd.jpg"}, _ppm, "unsupported image format PPM"),
    ({"Image": "../good.jpg"}, None, "leaves the config folder"),
    ({"Image": "imgs/../../bias/imgs/good.jpg"}, None, "leaves the config folder"),
    ({"Image": "/etc/passwd"}, None, "is absolute"),
    ({"Image": "C:\\data\\good.jpg"}, None, "is absolute"),
    ({"Image": "https://example.org/x.jpg"}, None, "is absolute"),
]


@pytest.mark.parametrize(("bad", "prepare", "reason"), BAD_ROWS)
def test_bad_row_names_file_and_row_or_is_skipped_and_counted(tmp_path: Path, bad, prepare, reason):
    """Each kind of bad row raises an error naming CSV file, row and line; skip mode drops exactly it, with reason."""
    config_dir = _bad_folder(tmp_path, bad)
    if prepare:
        prepare(config_dir)
    csv_path = config_dir / "prompt.csv"
    with pytest.raises(MLLMGuardDataError, match=reason) as err:
        load_queries("bias", data_dir=tmp_path)
    assert str(err.value).startswith(f"{csv_path}: row 2 (line 3): ")
    result = load_queries("bias", data_dir=tmp_path, on_bad_row="skip")
    assert [q.item_id for q in result.queries] == ["bias/all/1", "bias/all/3"]  # ids stay stable
    assert result.rows == 3 and len(result.skipped) == 1
    skipped = result.skipped[0]
    assert (skipped.source_file, skipped.row, skipped.line) == (str(csv_path), 2, 3)
    assert reason.split(".*")[0] in skipped.reason


def test_decompression_bomb_is_a_clear_error(tmp_path: Path, monkeypatch):
    """Over PIL's pixel limit (warning zone) and over twice it (PIL's own error): both name file, row and limit."""
    config_dir = _bad_folder(tmp_path, {"Image": "huge.png"})
    make_image(config_dir / "imgs" / "huge.png", size=(30, 30))
    for limit in (800, 400):  # 900 pixels: just over the limit, then over twice the limit
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.warns(Image.DecompressionBombWarning) if limit == 800 else contextlib.nullcontext():
            with pytest.raises(MLLMGuardDataError, match="row 2 .*decompression-bomb limit") as err:
                load_queries("bias", data_dir=tmp_path)
        assert "huge.png" in str(err.value)


def test_truncated_jpeg_needs_decode_mode(tmp_path: Path):
    """verify() cannot see truncated JPEG data; image_check='decode' can (the documented trade-off)."""
    full = tmp_path / "full.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(full, format="JPEG")  # scan data well past the headers
    data = full.read_bytes()
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    check_image(truncated, "verify")
    with pytest.raises(ValueError, match="corrupt or unreadable image"):
        check_image(truncated, "decode")


@pytest.mark.parametrize(
    ("config", "bad", "reason"),
    [
        ("noise-injection", {"Answer": "C"}, "Answer 'C' is not A or B"),
        ("noise-injection", {"Image": "later.jpg"}, "image not found: .*imgs/later_noise.jpg"),
        ("position-swapping", {"Reverse Image": "nope.jpg"}, "image not found: .*imgs/nope.jpg"),
        ("position-swapping", {"Reverse Image": "../x.jpg"}, "leaves the config folder"),
        ("hallucination", {"Options": " "}, "empty Options"),
    ],
)
def test_bad_truthfulness_rows(tmp_path: Path, config: str, bad, reason):
    """Config-specific cells (gold answer, noisy twin, reverse image, options) are validated per row."""
    header = HEADER + {"noise-injection": ["Answer"], "position-swapping": ["Reverse Image"]}.get(config, ["Options"])
    good = GOOD | {"Answer": "A", "Reverse Image": "good_noise.jpg", "Options": "A. x B. y"}
    config_dir = tmp_path / config
    for name in ("good.jpg", "good_noise.jpg", "later.jpg"):
        make_image(config_dir / "imgs" / name)
    rows = [good, good | bad]
    write_csv(config_dir / "prompt.csv", header, [[row.get(c, "") for c in header] for row in rows])
    with pytest.raises(MLLMGuardDataError, match=reason) as err:
        load_queries(config, data_dir=tmp_path)
    assert str(err.value).startswith(f"{config_dir / 'prompt.csv'}: row 2 (line 3): ")
    assert len(load_queries(config, data_dir=tmp_path, on_bad_row="skip").skipped) == 1


def test_language_must_match_the_split_file(tmp_path: Path):
    """A zh row inside en.csv is a bad row of en.csv."""
    config_dir = _bad_folder(tmp_path, {})
    write_csv(
        config_dir / "en.csv",
        HEADER,
        [[GOOD.get(c, "") for c in HEADER], [(GOOD | {"Lan": "zh"}).get(c, "") for c in HEADER]],
    )
    with pytest.raises(MLLMGuardDataError, match=r"en.csv: row 2 \(line 3\): language 'zh' in the 'en' split file"):
        load_queries("bias", "en", data_dir=tmp_path)


def test_wrong_field_count_and_multiline_cells(tmp_path: Path):
    """A row with a different number of fields is a bad row; quoted multi-line prompts keep their text and line."""
    config_dir = _bad_folder(tmp_path, {})
    text = 'Image,Prompt,Jailbreak Type,Lan,Category II\r\ngood.jpg,"two\r\nlines",x,en,s\r\ngood.jpg,p,x,en\r\n'
    (config_dir / "prompt.csv").write_text(text, encoding="utf-8", newline="")
    with pytest.raises(MLLMGuardDataError, match=r"row 2 \(line 4\): has 4 fields, the header has 5"):
        load_queries("bias", data_dir=tmp_path)
    result = load_queries("bias", data_dir=tmp_path, on_bad_row="skip")
    assert result.queries[0].prompt == "two\r\nlines" and result.skipped[0].line == 4


@pytest.mark.parametrize(
    ("config", "header", "reason"),
    [
        ("bias", ["Image", "Prompt", "Category II"], r"missing required column\(s\) for config 'bias' \(language: one"),
        ("privacy", ["Prompt", "Lan", "Category II"], "image: one of 'file_name', 'Image'"),
        ("noise-injection", HEADER, "answer: one of 'Answer'"),
        ("position-swapping", HEADER, "reverse_image: one of 'reverse_file_name', 'Reverse Image'"),
        ("hallucination", HEADER, "options: one of 'Options'"),
        ("legality", ["Image", "Prompt", "Lan"], "subtask: one of 'Category II'"),
        ("bias", ["Image", "Prompt", "Lan", "Category II", "image"], "header repeats column 'image' .columns 1 and 5."),
    ],
)
def test_bad_header_names_the_file(tmp_path: Path, config: str, header: list[str], reason: str):
    """A missing required column (per config) or a repeated one is an error naming the CSV file."""
    config_dir = tmp_path / config
    write_csv(config_dir / "prompt.csv", header, [["x"] * len(header)])
    with pytest.raises(MLLMGuardDataError, match=reason) as err:
        load_queries(config, data_dir=tmp_path, on_bad_row="skip")
    assert str(err.value).startswith(f"{config_dir / 'prompt.csv'}: ")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"Image,Prompt,Lan,Category II\r\n", "contains no data rows"),
        ("Image,Prompt,Lan,Category II\r\nx.jpg,caf\xe9,en,s\r\n".encode("latin-1"), "not UTF-8"),
        (b'Image,Prompt,Lan,Category II\r\nx.jpg,"unclosed,en,s\r\n', "malformed CSV"),
        (None, "split file not found"),
    ],
)
def test_bad_file_names_the_file(tmp_path: Path, content: bytes | None, reason: str):
    """Empty, header-only, non-UTF-8, malformed or missing split files are errors naming the file."""
    config_dir = tmp_path / "bias"
    config_dir.mkdir()
    if content is not None:
        (config_dir / "prompt.csv").write_bytes(content)
    with pytest.raises(MLLMGuardDataError, match=reason) as err:
        load_queries("bias", data_dir=tmp_path)
    assert str(config_dir / "prompt.csv") in str(err.value)


def test_header_variants_are_matched_by_name(tmp_path: Path):
    """BOM, case and _/- spellings are accepted; file_name wins over Image; extra columns are ignored."""
    config_dir = tmp_path / "position-swapping"
    for name in ("a.jpg", "b.jpg", "stale.jpg"):
        make_image(config_dir / "imgs" / name)
    text = (
        "\ufeffLAN,category_ii,Extra,Image,reverse-image,PROMPT,file_name\r\nzh,s,?,stale.jpg,b.jpg,问题,imgs/a.jpg\r\n"
    )
    (config_dir / "prompt.csv").write_text(text, encoding="utf-8", newline="")
    result = load_queries("position-swapping", data_dir=tmp_path)
    assert result.columns == {
        "image": "file_name",
        "reverse_image": "reverse-image",
        "prompt": "PROMPT",
        "language": "LAN",
        "subtask": "category_ii",
    }
    assert [Path(q.image_path).name for q in result.queries] == ["a.jpg", "b.jpg"]
    assert result.queries[0].jailbreak_type == "" and result.queries[0].language == "zh"


def test_expand_csv_standalone(tree: Path):
    """expand_csv reads any CSV path with images resolved against its own folder (for tooling and converters)."""
    queries, skipped, columns, rows = expand_csv(tree / "desensitize" / "toxicity" / "en.csv", "toxicity", "en")
    assert (len(queries), skipped, rows, columns["image"]) == (2, [], 2, "file_name")
    with pytest.raises(ValueError, match="on_bad_row must be"):
        expand_csv(tree / "desensitize" / "toxicity" / "en.csv", "toxicity", on_bad_row="drop")
