"""The benchmarks the report commands know: one ``BenchmarkDescriptor`` each, in report order.

Reporting a further benchmark = a descriptor in its own module, added to ``BENCHMARKS``.
"""

from __future__ import annotations

from esc_guard_tasks.report.benchmark import BenchmarkDescriptor
from esc_guard_tasks.report.esc import ESC_EVAL
from esc_guard_tasks.report.guard import MLLMGUARD, MLLMGUARD_DEMO

BENCHMARKS: tuple[BenchmarkDescriptor, ...] = (ESC_EVAL, MLLMGUARD, MLLMGUARD_DEMO)


def benchmark_of(task: str) -> BenchmarkDescriptor | None:
    """The benchmark a task or group belongs to (the longest matching prefix), None for anyone else's task."""
    owners = [b for b in BENCHMARKS if task.startswith(b.task_prefix)]
    return max(owners, key=lambda b: len(b.task_prefix), default=None)


def is_our_task(name: str) -> bool:
    return benchmark_of(name) is not None


def families() -> tuple[str, ...]:
    """The ``--benchmark`` choices of ``report table``, in report order."""
    return tuple(dict.fromkeys(b.family for b in BENCHMARKS))


def titles(joiner: str = " or ") -> str:
    """The benchmarks' names for messages and headings: ``ESC-Eval or MLLMGuard``."""
    return joiner.join(dict.fromkeys(b.title for b in BENCHMARKS))
