"""The files of a conversion: JSON in and out, hashes, the manifest, and output folders that appear atomically.

Every public conversion writes into a temporary sibling folder and renames it into place, so a
killed or failed run never leaves a folder that looks usable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "esc_guard_tasks.esc_rank.convert/1"
_SAFE_META = {"format": "pt"}  # what transformers writes and expects in a PyTorch safetensors file
# Files of a model/adapter folder that we rewrite (or drop) instead of copying.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf")


class ConversionError(ValueError):
    """An input that is missing, malformed or not what ESC-RANK ships; the message names the file."""


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a :class:`ConversionError` naming the file."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def write_json(path: Path, data: Any) -> None:
    """Indented UTF-8 JSON, as the hub's own config files are written."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    """Hex digest of a file read in 1 MiB blocks (weights are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(dst: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``dst``; rename it to ``dst`` only if the block succeeds.

    A killed or failed conversion never leaves a folder at ``dst`` that looks usable. If a
    concurrent run finished ``dst`` first (it has a manifest), its result is kept.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass overwrite=True / --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.chmod(0o755)
        if not dst.exists():
            os.replace(tmp, dst)
        elif overwrite:
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        elif not (dst / MANIFEST).is_file():
            raise ConversionError(f"{dst}: appeared during the conversion and is not a finished conversion")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temps(dst: Path, max_age_s: float = 6 * 3600) -> None:
    """Delete temp folders of killed conversions of ``dst`` (a 7B one is ~15 GB); recent ones may be live."""
    now = time.time()
    for stale in dst.parent.glob(f".{dst.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)


def copy_extras(src: Path, dst: Path, skip: set[str]) -> tuple[list[str], list[str]]:
    """Copy plain files not handled elsewhere; drop remote code (``*.py``) and weight files."""
    copied, dropped = [], []
    for path in sorted(src.iterdir()):
        if not path.is_file() or path.name in skip or path.name.startswith("."):
            continue
        if path.suffix == ".py" or path.name.endswith(_WEIGHT_SUFFIXES) or path.name.endswith(".index.json"):
            dropped.append(path.name)
            continue
        shutil.copyfile(path, dst / path.name)
        copied.append(path.name)
    return copied, dropped


def write_manifest(folder: Path, body: dict[str, Any]) -> None:
    """``folder/manifest.json``: ``body`` with the format, the time and the versions that made the conversion."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for dist in ("esc-guard-tasks", "torch", "transformers", "safetensors", "tokenizers", "sentencepiece"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(folder / MANIFEST, {"format": MANIFEST_FORMAT, "created": created, "versions": versions, **body})


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``tensors`` as the safetensors file ``path``, marked as PyTorch weights as transformers writes them."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=_SAFE_META)


def write_conversion(dst: Path, overwrite: bool, key: str, convert: Callable[[Path], dict[str, Any]]) -> None:
    """One part converted on its own: ``convert(folder)`` fills a temporary folder and returns its report, which
    the manifest holds under ``key``; the folder then moves to ``dst`` (see :func:`atomic_dir`)."""
    with atomic_dir(Path(dst), overwrite) as out:
        write_manifest(out, {key: convert(out)})
