"""A persistent judge cache: an SQLite file, keyed on judge identity + adapter + exact input.

Judging is the expensive part of a rerun (7 LoRA passes per dialogue); the same inputs
to the same judge give the same greedy reply, so they are served from disk. Replies are
committed chunk by chunk (one transaction each, WAL journal), so a run killed while judging
keeps every finished chunk. Chunks are cut from the full request list in a fixed order
(by adapter, longest input first), so a resumed run sends the backend the same batches
as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from esc_guard_tasks.hub import cache_dir
from esc_guard_tasks.judges.base import JudgeBackend, JudgeRequest, JudgeStats
from esc_guard_tasks.sqlite_files import SQLiteFile, check_file, open_checked
from esc_guard_tasks.usage import RoleUsage, UsageMeter

log = logging.getLogger("lm_eval.esc_guard_tasks")


# Requests per committed chunk for backends without a batch size of their own (vLLM, APIs).
DEFAULT_CHUNK = 256


CACHE_FILE = SQLiteFile(
    what="judge cache",
    setting="judge_cache.sqlite in the cache folder: $ESC_GUARD_CACHE, default ~/.cache/esc_guard_tasks",
    fix="Move the file away (a new cache is started and the judge is asked again),"
    " or set ESC_GUARD_CACHE to another folder",
    table="replies",
    columns=("key", "reply"),
    create_sql="CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)",
)


def default_cache_path() -> Path:
    return cache_dir() / "judge_cache.sqlite"


def check_cache(path: Path | None = None) -> None:
    """Fail now, before any model loads, if the judge cache exists and is not usable."""
    check_file(path or default_cache_path(), CACHE_FILE)


def request_key(identity: dict[str, Any], request: JudgeRequest) -> str:
    payload = json.dumps([identity, request.adapter, request.messages], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CachedJudge:
    """Wraps any backend; only requests not seen before reach it."""

    def __init__(self, backend: JudgeBackend, path: Path | None = None):
        self.backend = backend
        self.path = path or default_cache_path()
        self._lock = threading.Lock()
        self._db = open_checked(self.path, CACHE_FILE, check_same_thread=False)
        self.stats = JudgeStats()
        self.reused = UsageMeter()  # replies not sent (from the cache, or a repeat): no tokens counted

    def identity(self) -> dict[str, Any]:
        return self.backend.identity()

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str]:
        identity = self.backend.identity()
        keys = [request_key(identity, r) for r in requests]
        with self._lock:
            found = dict(self._lookup(keys))
        hits = sum(key in found for key in keys)
        sent = 0
        for chunk in self._chunks(requests):
            missing = list({keys[i]: i for i in chunk if keys[i] not in found}.values())
            if not missing:
                continue
            sent += len(missing)
            replies = self.backend.complete([requests[i] for i in missing])
            fresh = dict(zip([keys[i] for i in missing], replies, strict=True))
            with self._lock, self._db:  # one transaction per chunk
                self._db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?)", list(fresh.items()))
            found.update(fresh)
        self.stats.requests += len(requests)
        self.stats.cache_hits += hits
        self.reused.add(RoleUsage(reused=len(requests) - sent))  # cache hits and repeats within the batch
        if hits:
            log.info("Judge cache %s: %d of %d replies re-used", self.path, hits, len(requests))
        return [found[key] for key in keys]

    def _chunks(self, requests: Sequence[JudgeRequest]) -> list[list[int]]:
        """Request indices in commit-sized chunks: one model batch for backends with a ``batch_size``."""
        size = getattr(self.backend, "batch_size", None)
        size = size if isinstance(size, int) and size > 0 else DEFAULT_CHUNK
        order = sorted(
            range(len(requests)),
            key=lambda i: (requests[i].adapter, -sum(len(m["content"]) for m in requests[i].messages)),
        )
        return [order[start : start + size] for start in range(0, len(order), size)]

    def _lookup(self, keys: list[str]) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(f"SELECT key, reply FROM replies WHERE key IN ({marks})", chunk).fetchall()
        return rows
