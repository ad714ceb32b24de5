"""A persistent judge cache: an SQLite file, keyed on judge identity + adapter + exact input.

Judging is the expensive part of a rerun (7 LoRA passes per dialogue); the same inputs
to the same judge give the same greedy reply, so they are served from disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from esc_guard_tasks.judges.base import JudgeBackend, JudgeRequest, JudgeStats

log = logging.getLogger("lm_eval.esc_guard_tasks")


def default_cache_path() -> Path:
    root = Path(os.environ.get("ESC_GUARD_CACHE", Path.home() / ".cache" / "esc_guard_tasks"))
    return root / "judge_cache.sqlite"


def request_key(identity: dict[str, Any], request: JudgeRequest) -> str:
    payload = json.dumps([identity, request.adapter, request.messages], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CachedJudge:
    """Wraps any backend; only requests not seen before reach it."""

    def __init__(self, backend: JudgeBackend, path: Path | None = None):
        self.backend = backend
        self.path = path or default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self.stats = JudgeStats()

    def identity(self) -> dict[str, Any]:
        return self.backend.identity()

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str]:
        identity = self.backend.identity()
        keys = [request_key(identity, r) for r in requests]
        with self._lock:
            found = dict(self._lookup(keys))
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            replies = self.backend.complete([requests[i] for i in missing])
            fresh = dict(zip([keys[i] for i in missing], replies, strict=True))
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?)", list(fresh.items()))
            found.update(fresh)
        hits = len(requests) - len(missing)
        self.stats.requests += len(requests)
        self.stats.cache_hits += hits
        if hits:
            log.info("Judge cache %s: %d of %d replies re-used", self.path, hits, len(requests))
        return [found[key] for key in keys]

    def _lookup(self, keys: list[str]) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(f"SELECT key, reply FROM replies WHERE key IN ({marks})", chunk).fetchall()
        return rows
