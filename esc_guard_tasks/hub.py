"""Where this package's files live: its one cache folder, and model folders given as a path or a hub id.

Neutral ground for every subpackage (the ESC-Eval store and judges, ESC-RANK, GuardRank, the
demo model), so that none of them borrows these helpers from another benchmark's code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """``$ESC_GUARD_CACHE`` if set, else ``~/.cache/esc_guard_tasks``."""
    env = os.environ.get("ESC_GUARD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "esc_guard_tasks"


def local_folder(name_or_path: str, revision: str | None, what: str) -> Path:
    """A local folder as is; otherwise a hub snapshot (downloaded once by huggingface_hub)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, revision=revision))
    except Exception as err:  # noqa: BLE001 - offline, gated, missing: all need the same advice
        raise RuntimeError(
            f"cannot get the {what} {name_or_path!r} (revision {revision or 'main'}): {type(err).__name__}: {err}. "
            "Download it on a machine with hub access (huggingface-cli download …) and pass the local folder "
            "in judge_args."
        ) from None


OFFLINE_ADVICE = (
    "Give a local folder, or a model id that is already in the Hugging Face cache; on a machine without hub access "
    "set HF_HUB_OFFLINE=1 so that a missing model fails at once instead of after the hub's retries."
)


class ModelLoadError(OSError):
    """A model, tokenizer, processor or adapter that could not be loaded, named with the setting that chose it."""


@contextmanager
def naming_the_model(what: str, name: object, setting: str) -> Iterator[None]:
    """Re-raise the ``OSError`` of the loading calls inside (not cached, offline, unknown id, no access) as a
    ``ModelLoadError`` naming the model and the setting it came from: transformers' own message names neither."""
    try:
        yield
    except ModelLoadError:
        raise
    except OSError as err:
        raise ModelLoadError(f"cannot load the {what} {name!s} (set by {setting}): {err} {OFFLINE_ADVICE}") from err


def built_once(final: Path, build: Callable[[Path], object], marker: str, note: str) -> Path:
    """``final``, built by ``build(folder)`` on first use: into a temporary sibling that is moved into place
    with the ``marker`` file written last, so a reader never sees a half-built folder and a leftover without the
    marker is rebuilt."""
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        (tmp / marker).write_text(note + "\n", "utf-8")
        tmp.chmod(0o755)  # mkdtemp creates 0700; the cache may be shared
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / marker).is_file():  # a leftover without a marker: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
