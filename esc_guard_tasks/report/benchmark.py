"""What the report commands need to know about one benchmark, as data: a ``BenchmarkDescriptor``.

The table, HTML, merge and agreement code loop over the registered descriptors (``report.benchmarks``) and never name a
benchmark: reporting a further benchmark is one more descriptor, with its own rows, charts and sample reader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from esc_guard_tasks.report.results import Run
    from esc_guard_tasks.report.stats import Estimate


class Sample(Protocol):
    """One logged sample of a benchmark task; ``key`` identifies its item across runs and label files."""

    task: str

    @property
    def key(self) -> tuple[Any, ...]: ...


@dataclass(frozen=True)
class Chart:
    """One bar chart of the HTML report: a group of bars per category, one bar (with its CI) per run."""

    title: str  # the figure caption
    heading: str  # the title drawn in the chart
    note: str  # how the intervals were computed
    categories: list[str]
    series: dict[str, list[Estimate]]
    ylabel: str


@dataclass(frozen=True)
class LabelFormat:
    """How ``report agreement`` reads one benchmark's human labels and pairs them with its judged samples.

    A label line is this benchmark's when it has all of ``fields``. ``read(item, where)`` gives the key of the
    sample it labels and its score per dimension (None: not labelled); ``judged(sample, dimension, value, where)``
    gives the pair's dimension, the scale's maximum and the judge's score (not an int: an invalid reply). Both
    raise ``ReportInputError`` naming ``where`` (file:line) for a label they cannot use.
    """

    fields: tuple[str, ...]
    read: Callable[[dict[str, Any], str], tuple[tuple[Any, ...], dict[str, int | None]]]
    judged: Callable[[Sample, str, int, str], tuple[str, int, Any]]

    @property
    def shape(self) -> str:
        return " + ".join(self.fields)


@dataclass(frozen=True)
class BenchmarkDescriptor:
    """One benchmark as the report shows it.

    ``task_prefix`` recognises its tasks and groups in a results file (the longest matching prefix wins, so a
    demo group can be reported apart from its benchmark); ``family`` is the ``--benchmark`` choice it belongs to.
    ``rows(runs, paper)`` gives its leaderboard rows (``paper``: add published reference rows where it has
    them), headed ``caption`` (scale and direction); in the HTML comparison its rows join the table ``section``
    and pair across runs on ``comparison_key``. ``read_sample(task, line)`` reads one logged sample line,
    ``sample_view`` gives what the HTML sample browser shows of it (its ``kind`` names the template
    ``sample_<kind>.html.j2`` that shows it), and
    ``breakdown_metrics`` are the metric-name prefixes listed per language (``languages``) or subtask;
    ``labels`` is how its human labels read (``report agreement``), None when it has none.
    """

    family: str
    title: str
    task_prefix: str
    caption: str
    rows: Callable[[Sequence[Run], bool], list[dict[str, Any]]]
    comparison_key: tuple[str, ...]
    read_sample: Callable[[str, dict[str, Any]], Sample]
    sample_view: Callable[[Sample], dict[str, Any]]
    charts: Callable[[Sequence[Run], int, int], list[Chart]]
    section: str = ""  # default: its own caption
    breakdown_metrics: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    labels: LabelFormat | None = None

    @property
    def comparison_section(self) -> str:
        return self.section or self.caption
