"""Where this package's files live: its one cache folder, and model folders given as a path or a hub id.

Neutral ground for every subpackage (the ESC-Eval store and judges, ESC-RANK, GuardRank, the
demo model), so that none of them borrows these helpers from another benchmark's code.
"""

from __future__ import annotations

import os
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
