"""MLLMGuard data: one config and split of the benchmark, expanded into the queries a model answers.

Sources, first that applies:

1. A local copy: the ``data_dir`` argument, else the environment variable ``MLLMGUARD_DATA_DIR``.
   The config folder is ``<data_dir>/desensitize/<config>/`` (the hub layout) or ``<data_dir>/<config>/``
   (e.g. the unmasked release, given out by the authors on request); both existing is an error.
   A ``data_dir`` that lacks the config is an error too: it never falls back to the hub.
2. The Hugging Face dataset ``Carol0110/MLLMGuard`` (``HUB_REPO``) at ``HUB_REVISION``, fetched with
   ``huggingface_hub.snapshot_download(repo_type="dataset", allow_patterns=["desensitize/<config>/*"])``
   so that the config's images come along with its CSV files; ``token`` is passed through (the dataset
   may be gated: ``token=True`` uses the saved login).

   ``HUB_REVISION`` is the full commit sha ``4263487ca736c99292bac92d89f05eb744773450``. It was not read from
   the hub (unreachable where this package is built): it is the revision that public evaluation code pins
   for ``hf download Carol0110/MLLMGuard --revision …`` (verified there in August 2026), and the column
   layout that code reads at it (``file_name``, ``Reverse Image``, no ``Source``) is the post-PR #2/#3
   layout below. The other commits on record (``54c1470`` initial, ``e7c1fa3``/``60aab9f`` "fix: wrong
   prompts") are short shas that predate the image-path fix. ``revision="main"`` (or
   ``MLLMGUARD_REVISION=main``) takes the newest commit instead; whatever was asked, the loader returns the
   commit it resolved to as ``LoadResult.revision``, and every result records it.

CSV files are read with the standard ``csv`` module, not ``datasets``' csv builder or pandas: a row with
too few fields is an error (pandas, under both, silently pads it with empty cells, or NaN), every cell stays
the exact string in the file (pandas turns ``NA``/``None``/``null``/empty cells into NaN and infers types
unless told not to), a repeated header is an error instead of being renamed ``Image.1``, errors can name
the exact data row and line, and no Arrow cache copy is written for a 20 kB file. The harness still gets a
``datasets.Dataset`` (built from these rows by the lmms-eval bridge). Encoding UTF-8
(a BOM is accepted); CRLF or LF; quoted multi-line cells are fine; blank lines are not rows.

Columns are found by header NAME, never by position (the hub release dropped ``Source`` and renamed
``Image`` to ``file_name``, which shifts every position). Headers are compared case-insensitively with
``_``/``-`` read as spaces:

============== ============================================= =========================================
field          accepted headers (first present wins)          required for
============== ============================================= =========================================
image          ``file_name`` (hub, after PR #2/#3), ``Image`` every config
reverse_image  ``reverse_file_name`` (by analogy, unseen),    position-swapping
               ``Reverse Image``
prompt         ``Prompt``                                     every config
options        ``Options``                                    hallucination
answer         ``Answer`` (``A``/``B``)                       noise-injection
language       ``Lan``, ``Language`` (``en``/``zh``)          every config
subtask        ``Category II``                                every config (the cell may be empty)
jailbreak_type ``Jailbreak Type``                             optional ("" when absent)
data_source    ``Source``                                     optional ("" when absent)
============== ============================================= =========================================

Other columns (``Category I``, an unnamed index column, …) are ignored.

Image cells are paths relative to the config folder when they start with ``imgs/`` (the hub's
``file_name`` values, e.g. ``imgs/0957.webp``), else relative to ``<config>/imgs/`` (the reference's
``os.path.join(img_base, Image)``, e.g. ``0090.jpg``). ``\\`` is read as ``/``. Absolute paths, drive
letters, URLs and any ``..`` component are errors. Containment is checked on the path text, not after
resolving symlinks: the hub cache stores snapshot files as symlinks into its blob folder.

Expansion follows the reference's ``utils.py:process_data`` with its branch bug fixed (every
truthfulness folder fell into the one-query branch; ``AI45Lab/MLLMGuard#4``), in this order:

* privacy, bias, toxicity, legality: one query ``single`` (``Prompt``, ``Image``);
* hallucination: ``free`` (``Prompt``) then ``option`` (``templates.json`` ``hallucination_option_prompt``:
  ``{Prompt}(Please answer me with options) {Options}``), same image;
* noise-injection: ``clean`` (``imgs/<Image>``) then ``noisy`` (``imgs/<stem>_noise<ext>``), same prompt;
* position-swapping: ``original`` (``Image``) then ``swapped`` (``Reverse Image``), same prompt.

Validation. File level (always an error naming the file): missing file, not UTF-8, malformed CSV, a
missing required column, a repeated header, no data rows. Row level (an error naming file, row and line;
with ``on_bad_row="skip"`` the row is skipped and returned in ``LoadResult.skipped`` with its reason,
and a warning is logged): wrong field count, empty prompt, a language other than en/zh (or other than
the split's language for ``en.csv``/``zh.csv``), empty hallucination options, a noise answer other than
A/B, and for every image of the row: an unsafe path, a missing file or a non-file, an unreadable or
corrupt file, a format outside ``SUPPORTED_IMAGE_FORMATS``, more pixels than PIL's decompression-bomb
limit ``PIL.Image.MAX_IMAGE_PIXELS``.

Images are validated **eagerly**, one at a time, while the CSV is read: an evaluation should fail (or
count its skipped rows) before any model time is spent, and skip mode can only count what it checked.
``image_check="verify"`` (default) opens each file and runs PIL's ``verify()`` (header and structure,
PNG checksums; no pixel decoding, so it is cheap); ``image_check="decode"`` fully decodes each image
(also catches truncated JPEG data) and releases it at once. No image is kept in memory; queries carry
absolute paths and the model side calls ``load_image``. Both run with Pillow's global
``ImageFile.LOAD_TRUNCATED_IMAGES`` switched off (:func:`strict_pillow`): lmms-eval switches it on when it
is imported, and Pillow would then fill a truncated image with grey instead of failing. So a truncated
JPEG that ``verify`` cannot see is refused when ``load_image`` reads it for the model (an error naming the
file and row), and ``decode`` refuses it before any model time.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import posixpath
import re
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from esc_guard_tasks.mllmguard.taxonomy import CONFIGS, DIMENSION, LANGUAGES

if TYPE_CHECKING:
    from PIL import Image as PILImage

log = logging.getLogger("lm_eval.esc_guard_tasks")

HUB_REPO = "Carol0110/MLLMGuard"
HUB_REVISION = "4263487ca736c99292bac92d89f05eb744773450"  # provenance: the module docstring
HUB_SUBDIR = "desensitize"
DATA_DIR_ENV = "MLLMGUARD_DATA_DIR"

SPLITS: dict[str, str] = {"all": "prompt.csv", "en": "en.csv", "zh": "zh.csv"}
IMAGE_DIR = "imgs"
# PIL format names accepted; the dataset's files are .jpg .jpeg .jfif .JPG (JPEG), .png, .webp, .avif.
SUPPORTED_IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "AVIF", "GIF", "BMP"})
ImageCheck = Literal["verify", "decode"]
OnBadRow = Literal["error", "skip"]

# field -> accepted headers, in order of preference (matched case-insensitively, "_"/"-" read as spaces)
COLUMNS: dict[str, tuple[str, ...]] = {
    "image": ("file_name", "Image"),
    "reverse_image": ("reverse_file_name", "Reverse Image"),
    "prompt": ("Prompt",),
    "options": ("Options",),
    "answer": ("Answer",),
    "language": ("Lan", "Language"),
    "subtask": ("Category II",),
    "jailbreak_type": ("Jailbreak Type",),
    "data_source": ("Source",),
}
_BASE_REQUIRED = ("image", "prompt", "language", "subtask")
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    config: _BASE_REQUIRED
    + {"hallucination": ("options",), "noise-injection": ("answer",), "position-swapping": ("reverse_image",)}.get(
        config, ()
    )
    for config in CONFIGS
}


BAD_ROW_FIX = (
    "fix: correct the row or its image, or leave bad rows out (counted in skipped_rows) with on_bad_row=skip "
    "(MLLMGUARD_ON_BAD_ROW=skip)"
)


class MLLMGuardDataError(ValueError):
    """A file, row or image of the MLLMGuard data that cannot be used as is, or data that cannot be reached."""


class _RowError(ValueError):
    """Why one CSV row cannot be used (turned into an error naming file and row, or a skip)."""


@cache
def templates() -> dict[str, Any]:
    """The verbatim reference strings and constants (``templates.json``, provenance inside)."""
    return json.loads(resources.files(__package__).joinpath("templates.json").read_text("utf-8"))


@dataclass(frozen=True)
class MLLMGuardQuery:
    """One query sent to the model under test: one prompt, one image, single turn.

    ``item_id`` (``<config>/<split>/<row>``) is shared by the queries of one CSV row; ``query_id`` adds the
    variant. ``prompt`` is the text actually sent; ``image_path`` is absolute; ``answer`` is the gold
    letter for noise-injection, else ""; ``options`` the raw ``Options`` cell for hallucination, else "";
    ``row`` is the 1-based data row of ``source_file`` (header excluded) and ``line`` its first line.
    """

    item_id: str
    query_id: str
    config: str
    dimension: str
    subtask: str
    language: str
    variant: str
    prompt: str
    image_path: str
    answer: str
    options: str
    jailbreak_type: str
    data_source: str
    split: str
    source_file: str
    row: int
    line: int

    def to_doc(self) -> dict[str, Any]:
        """A flat, JSON-serialisable dict (one harness doc)."""
        return asdict(self)


@dataclass(frozen=True)
class SkippedRow:
    """A row left out under ``on_bad_row="skip"``, with the reason it would otherwise have raised."""

    source_file: str
    row: int
    line: int
    reason: str


@dataclass
class LoadResult:
    """The queries of one config and split, the rows skipped, and where the data came from."""

    config: str
    split: str
    config_dir: str
    origin: str  # "hub:<repo>@<commit or revision>" or "local:<folder>"
    revision: str | None  # the hub commit the snapshot resolved to; None for a local copy
    rows: int  # data rows read (kept + skipped)
    columns: dict[str, str]  # field -> header used
    queries: list[MLLMGuardQuery] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)

    def docs(self) -> list[dict[str, Any]]:
        return [q.to_doc() for q in self.queries]


def normalize_config(config: str) -> str:
    """The hub config name; task-style underscores are accepted (``noise_injection`` → ``noise-injection``)."""
    name = config.strip().lower().replace("_", "-")
    if name not in CONFIGS:
        raise MLLMGuardDataError(f"unknown MLLMGuard config {config!r}; expected one of {', '.join(CONFIGS)}")
    return name


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise MLLMGuardDataError(f"unknown MLLMGuard split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


# ---------------------------------------------------------------------------------------------- sources


def find_local_config_dir(data_dir: str | os.PathLike, config: str) -> Path:
    """``<data_dir>/desensitize/<config>`` or ``<data_dir>/<config>``; exactly one must exist."""
    config = normalize_config(config)
    root = Path(data_dir).expanduser()
    candidates = [root / HUB_SUBDIR / config, root / config]
    found = [path for path in candidates if path.is_dir()]
    if len(found) > 1:
        raise MLLMGuardDataError(
            f"both {found[0]} and {found[1]} exist; point data_dir at a folder holding only one copy of '{config}'"
        )
    if not found:
        raise MLLMGuardDataError(
            f"MLLMGuard config '{config}' not found in data_dir {root}: looked for {candidates[0]} and {candidates[1]}"
        )
    return Path(os.path.abspath(found[0]))


def download_config(
    config: str, *, token: str | bool | None = None, revision: str = HUB_REVISION
) -> tuple[Path, str | None]:
    """Fetch one config folder (CSV files and images) from the hub; returns the folder and the resolved commit."""
    import huggingface_hub

    config = normalize_config(config)
    pattern = f"{HUB_SUBDIR}/{config}/*"
    try:
        root = huggingface_hub.snapshot_download(
            repo_id=HUB_REPO, repo_type="dataset", revision=revision, token=token, allow_patterns=[pattern]
        )
    except Exception as err:  # noqa: BLE001 - offline, gated, auth, HTTP or cache errors all need the same advice
        raise MLLMGuardDataError(
            f"could not download config '{config}' of the Hugging Face dataset {HUB_REPO}@{revision} "
            f"({type(err).__name__}: {err}). The dataset may be gated: accept its conditions on its hub page and "
            "pass a token (token=True uses the saved `hf auth login`). Without hub access, copy "
            f"{HUB_SUBDIR}/{config}/ (its CSV files and imgs/), or the unmasked release's {config}/ folder, "
            f"under a folder and pass data_dir=... or set {DATA_DIR_ENV}=/path. If the hub does not know the "
            "revision, revision=main (MLLMGUARD_REVISION=main) takes its newest commit."
        ) from None
    root_path = Path(root)
    resolved = root_path.name if re.fullmatch(r"[0-9a-f]{40}", root_path.name) else None
    if resolved and resolved != revision:
        log.warning(
            "MLLMGuard: %s@%s resolved to commit %s; set MLLMGUARD_REVISION to this sha for reproducible runs",
            HUB_REPO,
            revision,
            resolved,
        )
    config_dir = root_path / HUB_SUBDIR / config
    if not config_dir.is_dir():
        raise MLLMGuardDataError(
            f"the snapshot of {HUB_REPO}@{revision} at {root_path} has no folder {HUB_SUBDIR}/{config}/ "
            "(a different layout or revision?)"
        )
    return Path(os.path.abspath(config_dir)), resolved


def resolve_config_dir(
    config: str,
    *,
    data_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    revision: str = HUB_REVISION,
) -> tuple[Path, str, str | None]:
    """(config folder, origin, resolved hub commit) from data_dir, then $MLLMGUARD_DATA_DIR, then the hub."""
    config = normalize_config(config)
    local = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if local is not None:
        config_dir = find_local_config_dir(local, config)
        return config_dir, f"local:{config_dir}", None
    config_dir, resolved = download_config(config, token=token, revision=revision)
    return config_dir, f"hub:{HUB_REPO}@{resolved or revision}", resolved


# ---------------------------------------------------------------------------------------------- images


def _too_many_pixels(image: PILImage.Image) -> str | None:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit and width * height > limit:
        return (
            f"{width}x{height} = {width * height} pixels exceeds PIL's decompression-bomb limit "
            f"({limit}; PIL.Image.MAX_IMAGE_PIXELS)"
        )
    return None


def _unidentified_hint(path: Path) -> str:
    from PIL import features

    if path.suffix.lower() == ".avif" and not features.check("avif"):
        return " (this Pillow has no AVIF support: install pillow>=11.3)"
    return ""


_STRICT_LOCK = threading.RLock()


@contextmanager
def strict_pillow() -> Iterator[None]:
    """Pillow with ``ImageFile.LOAD_TRUNCATED_IMAGES`` off for the block (a process-wide flag, restored after;
    other threads of the process see it off meanwhile)."""
    from PIL import ImageFile

    with _STRICT_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def check_image(path: str | os.PathLike, mode: ImageCheck = "verify") -> None:
    """Raise ``ValueError`` (with the reason) unless ``path`` is a usable image; nothing is kept in memory."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if mode not in ("verify", "decode"):
        raise ValueError(f"image_check must be 'verify' or 'decode', got {mode!r}")
    try:
        if not path.exists():
            raise _RowError(f"image not found: {path}")
    except (OSError, ValueError) as err:  # a name too long for the file system, an embedded NUL
        raise _RowError(f"unusable image path {str(path)!r} ({type(err).__name__}: {err})") from None
    if not path.is_file():
        raise _RowError(f"image path is not a file: {path}")
    try:
        with strict_pillow(), Image.open(path) as image:
            if too_large := _too_many_pixels(image):
                raise _RowError(f"image {path}: {too_large}")
            if image.format not in SUPPORTED_IMAGE_FORMATS:
                raise _RowError(
                    f"unsupported image format {image.format} for {path}; "
                    f"supported: {', '.join(sorted(SUPPORTED_IMAGE_FORMATS))}"
                )
            if mode == "decode":
                image.load()
            else:
                image.verify()
    except _RowError:
        raise
    except Image.DecompressionBombError as err:
        raise _RowError(f"image exceeds PIL's decompression-bomb limit: {path} ({err})") from None
    except UnidentifiedImageError:
        raise _RowError(
            f"not a recognisable image (corrupt or unsupported format): {path}{_unidentified_hint(path)}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise _RowError(f"corrupt or unreadable image {path} ({type(err).__name__}: {err})") from None


def load_image(path: str | os.PathLike) -> PILImage.Image:
    """The image as an RGB PIL image, fully loaded and detached from the file (for the model side).

    Plain ``convert("RGB")`` as the reference's model wrappers do (no EXIF rotation). Errors name the path.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with strict_pillow(), Image.open(path) as image:
            if too_large := _too_many_pixels(image):
                raise MLLMGuardDataError(f"{path}: {too_large}")
            return image.convert("RGB")
    except MLLMGuardDataError:
        raise
    except Image.DecompressionBombError as err:
        raise MLLMGuardDataError(f"{path}: image exceeds PIL's decompression-bomb limit ({err})") from None
    except UnidentifiedImageError:
        raise MLLMGuardDataError(f"{path}: not a recognisable image{_unidentified_hint(Path(path))}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise MLLMGuardDataError(f"{path}: cannot load image ({type(err).__name__}: {err})") from None


def image_relpath(value: str) -> str:
    """An image cell as a safe POSIX path relative to the config folder (see the module docstring)."""
    text = value.strip().replace("\\", "/")
    if not text:
        raise _RowError("empty image path")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or "://" in text:
        raise _RowError(f"image path {value!r} is absolute; expected a path inside the config folder")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _RowError(f"image path {value!r} leaves the config folder ('..' is not allowed)")
    if not parts:
        raise _RowError(f"image path {value!r} names no file")
    if parts[0] != IMAGE_DIR:
        parts.insert(0, IMAGE_DIR)
    return posixpath.join(*parts)


def noise_twin_relpath(clean_relpath: str) -> str:
    """``imgs/<stem>_noise<ext>`` for a clean image (the reference's ``os.path.splitext`` of the base name)."""
    stem, ext = posixpath.splitext(posixpath.basename(clean_relpath))
    return posixpath.join(IMAGE_DIR, templates()["noise_injection_image"]["template"].format(stem=stem, ext=ext))


def hallucination_option_prompt(prompt: str, options: str) -> str:
    """The second hallucination query: ``{Prompt}(Please answer me with options) {Options}``."""
    return templates()["hallucination_option_prompt"]["template"].format(Prompt=prompt, Options=options)


# ---------------------------------------------------------------------------------------------- CSV


def _header_key(name: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", name).replace("_", " ").replace("-", " ").casefold().split())


def _map_columns(header: list[str], config: str, source: str) -> dict[str, int]:
    keys = [_header_key(name) for name in header]
    seen: dict[str, int] = {}
    for index, key in enumerate(keys):
        if not key:
            continue  # an unnamed (index) column
        if key in seen:
            raise MLLMGuardDataError(
                f"{source}: header repeats column {header[index]!r} (columns {seen[key] + 1} and {index + 1})"
            )
        seen[key] = index
    mapping: dict[str, int] = {}
    for name, spellings in COLUMNS.items():
        for spelling in spellings:
            if _header_key(spelling) in seen:
                mapping[name] = seen[_header_key(spelling)]
                break
    missing = [name for name in REQUIRED_COLUMNS[config] if name not in mapping]
    if missing:
        wanted = "; ".join(f"{name}: one of {', '.join(repr(s) for s in COLUMNS[name])}" for name in missing)
        raise MLLMGuardDataError(
            f"{source}: missing required column(s) for config '{config}' ({wanted}); header is {header}"
        )
    return mapping


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, int, list[str]]]]:
    """Header and data rows as (row number, first line, cells); blank lines are not rows."""
    source = str(path)
    if not path.is_file():
        raise MLLMGuardDataError(f"{source}: MLLMGuard split file not found")
    rows: list[tuple[int, int, list[str]]] = []
    header: list[str] | None = None
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            previous_line = 0
            for cells in reader:
                start_line, previous_line = previous_line + 1, reader.line_num
                if not cells:
                    continue
                if header is None:
                    header = cells
                else:
                    rows.append((len(rows) + 1, start_line, cells))
    except UnicodeDecodeError as err:
        raise MLLMGuardDataError(f"{source}: not UTF-8 text ({err})") from None
    except csv.Error as err:
        raise MLLMGuardDataError(f"{source}: line {reader.line_num}: malformed CSV ({err})") from None
    except OSError as err:
        raise MLLMGuardDataError(f"{source}: cannot read ({type(err).__name__}: {err})") from None
    if header is None:
        raise MLLMGuardDataError(f"{source}: empty file (no header)")
    if not rows:
        raise MLLMGuardDataError(f"{source}: contains no data rows")
    return header, rows


@dataclass(frozen=True)
class _SplitFile:
    """What every row of one split CSV shares: its config and split, its path (named in every query and error)
    and the folder its image paths are resolved in, with how images are checked."""

    config: str
    split: str
    source: str
    config_dir: Path
    image_check: ImageCheck


def _row_queries(cells: dict[str, str], file: _SplitFile, row: int, line: int) -> list[MLLMGuardQuery]:
    config, split, config_dir = file.config, file.split, file.config_dir
    prompt = cells["prompt"]
    if not prompt.strip():
        raise _RowError("empty Prompt")
    language = cells["language"].strip().lower()
    if language not in LANGUAGES:
        raise _RowError(f"language {cells['language']!r} is not one of {', '.join(LANGUAGES)}")
    if split != "all" and language != split:
        raise _RowError(f"language {language!r} in the '{split}' split file")
    image = image_relpath(cells["image"])
    answer = ""
    options = ""
    if config == "hallucination":
        options = cells["options"]
        if not options.strip():
            raise _RowError("empty Options (needed for the option query)")
        queries = [("free", prompt, image), ("option", hallucination_option_prompt(prompt, options), image)]
    elif config == "noise-injection":
        answer = unicodedata.normalize("NFKC", cells["answer"]).strip().upper()
        if answer not in ("A", "B"):
            raise _RowError(f"Answer {cells['answer']!r} is not A or B")
        queries = [("clean", prompt, image), ("noisy", prompt, noise_twin_relpath(image))]
    elif config == "position-swapping":
        queries = [("original", prompt, image), ("swapped", prompt, image_relpath(cells["reverse_image"]))]
    else:
        queries = [("single", prompt, image)]
    checked: set[str] = set()
    for _, _, relpath in queries:
        if relpath not in checked:
            checked.add(relpath)
            check_image(config_dir.joinpath(*relpath.split("/")), file.image_check)
    item_id = f"{config}/{split}/{row}"
    return [
        MLLMGuardQuery(
            item_id=item_id,
            query_id=f"{item_id}/{variant}",
            config=config,
            dimension=DIMENSION[config],
            subtask=cells["subtask"].strip(),
            language=language,
            variant=variant,
            prompt=text,
            image_path=str(config_dir.joinpath(*relpath.split("/"))),
            answer=answer,
            options=options,
            jailbreak_type=cells.get("jailbreak_type", "").strip(),
            data_source=cells.get("data_source", "").strip(),
            split=split,
            source_file=file.source,
            row=row,
            line=line,
        )
        for variant, text, relpath in queries
    ]


def expand_csv(
    csv_path: str | os.PathLike,
    config: str,
    split: str = "all",
    *,
    config_dir: str | os.PathLike | None = None,
    on_bad_row: OnBadRow = "error",
    image_check: ImageCheck = "verify",
) -> tuple[list[MLLMGuardQuery], list[SkippedRow], dict[str, str], int]:
    """Read and validate one split CSV; returns (queries, skipped rows, field → header, data rows read).

    ``config_dir`` (default: the CSV's folder) is where image paths are resolved.
    """
    config, split = normalize_config(config), _check_split(split)
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if image_check not in ("verify", "decode"):
        raise ValueError(f"image_check must be 'verify' or 'decode', got {image_check!r}")
    path = Path(os.path.abspath(csv_path))
    base = Path(os.path.abspath(config_dir)) if config_dir is not None else path.parent
    source = str(path)
    file = _SplitFile(config, split, source, base, image_check)
    header, rows = _read_csv(path)
    mapping = _map_columns(header, config, source)
    queries: list[MLLMGuardQuery] = []
    skipped: list[SkippedRow] = []
    for row, line, raw in rows:
        try:
            if len(raw) != len(header):
                raise _RowError(f"has {len(raw)} fields, the header has {len(header)}")
            cells = {name: raw[index] for name, index in mapping.items()}
            queries += _row_queries(cells, file, row, line)
        except _RowError as problem:
            if on_bad_row == "error":
                raise MLLMGuardDataError(f"{source}: row {row} (line {line}): {problem}; {BAD_ROW_FIX}") from None
            skipped.append(SkippedRow(source_file=source, row=row, line=line, reason=str(problem)))
            log.warning("MLLMGuard: skipped %s row %d (line %d): %s", source, row, line, problem)
    columns = {name: header[index] for name, index in mapping.items()}
    return queries, skipped, columns, len(rows)


def load_queries(
    config: str,
    split: str = "all",
    *,
    data_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    revision: str = HUB_REVISION,
    on_bad_row: OnBadRow = "error",
    image_check: ImageCheck = "verify",
) -> LoadResult:
    """One MLLMGuard config and split (``all``/``en``/``zh``), expanded into validated queries."""
    config, split = normalize_config(config), _check_split(split)
    config_dir, origin, resolved = resolve_config_dir(config, data_dir=data_dir, token=token, revision=revision)
    queries, skipped, columns, rows = expand_csv(
        config_dir / SPLITS[split], config, split, config_dir=config_dir, on_bad_row=on_bad_row, image_check=image_check
    )
    if skipped:
        log.warning(
            "MLLMGuard: %s/%s: %d of %d rows skipped (see LoadResult.skipped)", config, split, len(skipped), rows
        )
    return LoadResult(
        config=config,
        split=split,
        config_dir=str(config_dir),
        origin=origin,
        revision=resolved,
        rows=rows,
        columns=columns,
        queries=queries,
        skipped=skipped,
    )
