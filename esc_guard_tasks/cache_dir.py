"""The one cache folder every persistent artefact of this package lives in."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ESC_GUARD_CACHE`` if set, else ``~/.cache/esc_guard_tasks``."""
    env = os.environ.get("ESC_GUARD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "esc_guard_tasks"
