"""Wall time and memory of one benchmark step: peak RSS (sampled) and, optionally, the driver's Python heap."""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


@dataclass
class Measured:
    seconds: float
    rss_peak_mb: float  # peak resident set size while the step ran
    rss_delta_mb: float  # that peak minus the RSS before the step
    heap_peak_mb: float | None  # peak traced Python heap (tracemalloc): the driver's own objects, not tensors
    load_before: float  # 1-minute load average when the step started

    def as_dict(self) -> dict[str, Any]:
        return rounded(self, 4)


def rounded(record: Any, digits: int) -> dict[str, Any]:
    """A dataclass's fields as a dict, floats rounded (benchmark JSON stays readable)."""
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in vars(record).items()}


def measure(step: Callable[[], T], *, trace_heap: bool = False) -> tuple[T, Measured]:
    """Run ``step`` once; RSS is sampled every 20 ms by a thread (cheap), the heap only when asked (slow)."""
    start_rss = rss_bytes()
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    load = os.getloadavg()[0]
    if trace_heap:
        tracemalloc.start()
    sampler.start()
    began = time.perf_counter()
    try:
        result = step()
    finally:
        seconds = time.perf_counter() - began
        done.set()
        sampler.join()
        heap = tracemalloc.get_traced_memory()[1] / 2**20 if trace_heap else None
        if trace_heap:
            tracemalloc.stop()
    peak[0] = max(peak[0], rss_bytes())
    return result, Measured(seconds, peak[0] / 2**20, (peak[0] - start_rss) / 2**20, heap, load)
