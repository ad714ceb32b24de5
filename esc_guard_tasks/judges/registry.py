"""The one judge registry: which code builds each (judge, backend), and the judges built so far in this process.

Both benchmarks ask here, so a judge backend is added in one table. A builder is named by ``module:attribute``
and imported on first use: this layer imports no benchmark, and a benchmark's builder (ESC-RANK's in
``esc_rank``) may depend on the benchmark that asks for it without an import cycle. Judges hold models,
connections and cache files, so each (judge, backend, args) is built once per process, behind a lock (lmms-eval
scores from a thread pool).
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

# A builder takes the judge's checked arguments (its own copy) and returns the judge.
Builder = Callable[[dict[str, Any]], Any]

BUILDERS: dict[tuple[str, str], str | Builder] = {
    ("esc_rank", "hf"): "esc_guard_tasks.esc_rank.judge:hf_backend",
    ("esc_rank", "vllm"): "esc_guard_tasks.esc_rank.judge:vllm_backend",
    ("esc_rank", "openai"): "esc_guard_tasks.esc_rank.judge:openai_backend",
    ("llm_rubric", "hf"): "esc_guard_tasks.esc_eval.judging:rubric_hf_backend",
    ("llm_rubric", "vllm"): "esc_guard_tasks.esc_eval.judging:rubric_vllm_backend",
    ("llm_rubric", "openai"): "esc_guard_tasks.esc_eval.judging:rubric_openai_backend",
    ("guardrank", "hf"): "esc_guard_tasks.mllmguard.judges.guardrank:GuardRankJudge",
    ("llm", "openai"): "esc_guard_tasks.mllmguard.judges.llm:LLMJudge",
    ("keywords", "rules"): "esc_guard_tasks.mllmguard.judges.keywords:KeywordJudge",
}
_BUILT: dict[tuple[str, str, str, bool], Any] = {}
_LOCK = threading.Lock()


def backends(judge: str) -> tuple[str, ...]:
    """The backends ``judge`` can run on, in the table's order."""
    return tuple(backend for name, backend in BUILDERS if name == judge)


def builder(judge: str, backend: str) -> Builder:
    try:
        found = BUILDERS[(judge, backend)]
    except KeyError:
        known = ", ".join(f"{j}/{b}" for j, b in BUILDERS)
        raise ValueError(f"no judge {judge!r} on backend {backend!r} (known judge/backend: {known})") from None
    if isinstance(found, str):
        module, _, name = found.partition(":")
        return getattr(importlib.import_module(module), name)
    return found


def build(judge: str, backend: str, args: Mapping[str, Any]) -> Any:
    """A new judge every call (``esc-guard verify``, tests); runs keep the one :func:`get` returns."""
    return builder(judge, backend)(dict(args))


def get(judge: str, backend: str, args: Mapping[str, Any], *, cached: bool = False) -> Any:
    """The judge for (judge, backend, args), built on the first call of this process and returned from then on.

    ``cached``: behind the persistent judge cache (:class:`~esc_guard_tasks.judges.cache.CachedJudge`), for a
    builder that returns a bare ``JudgeBackend``; a judge that caches its own parts leaves it False."""
    # values may be unhashable (a mapping was passed): the key holds them as JSON
    key = (judge, backend, json.dumps(dict(args), sort_keys=True, default=str), cached)
    with _LOCK:
        if key not in _BUILT:
            built = build(judge, backend, args)
            if cached:
                from esc_guard_tasks.judges.cache import CachedJudge

                built = CachedJudge(built)
            _BUILT[key] = built
        return _BUILT[key]


def clear() -> None:
    """Forget the built judges (tests, or a long-lived process that changes its settings)."""
    with _LOCK:
        _BUILT.clear()
