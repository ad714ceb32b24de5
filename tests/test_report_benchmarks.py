"""The report commands loop over benchmark descriptors (``report.benchmarks``): a further benchmark is reported
by registering one more descriptor, with no edit to the table, HTML, merge, agreement or samples-reading code."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from report_fixtures import write_run

from esc_guard_tasks.report import agreement, benchmarks, html, merge, table
from esc_guard_tasks.report.benchmark import BenchmarkDescriptor, Chart, LabelFormat
from esc_guard_tasks.report.esc import ESC_EVAL
from esc_guard_tasks.report.guard import MLLMGUARD, MLLMGUARD_DEMO, GuardSample
from esc_guard_tasks.report.results import ReportInputError, metric, task_row
from esc_guard_tasks.report.runs import load_runs, read_samples
from esc_guard_tasks.report.stats import Estimate

TOY = "toybench"


def _toy_rows(runs, paper):
    return [
        {"model": run.label, "toy score": metric(task_row(run.results, TOY), "score")}
        for run in runs
        if task_row(run.results, TOY)
    ]


def _toy_charts(runs, seed, resamples):
    series = {run.label: [Estimate(metric(task_row(run.results, TOY), "score"))] for run in runs}
    return [Chart("Toybench chart", "toy", "no CI", ["score"], series, "score")]


TOYBENCH = BenchmarkDescriptor(
    family=TOY,
    title="Toybench",
    task_prefix=TOY,
    caption="Toybench (higher is better)",
    rows=_toy_rows,
    comparison_key=("model",),
    read_sample=lambda task, line: GuardSample(task, line["toy"]),  # its own key: MLLMGuard's reader would fail
    sample_view=lambda sample: {"kind": "guard", "record": sample.record, "image": None},
    charts=_toy_charts,
)


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setattr(benchmarks, "BENCHMARKS", (*benchmarks.BENCHMARKS, TOYBENCH))


def _toy_run(folder, model="toy-model", score=61.5):
    record = {
        "query_id": "q-1",
        "language": "en",
        "subtask": "toy",
        "image_path": None,
        "prompt": "toy prompt text",
        "response": "toy answer text",
    }
    return write_run(folder, model, {TOY: {"score,none": score}}, {TOY: [{"doc_id": 0, "toy": record}]})


def test_a_registered_descriptor_is_tabulated_and_rendered(tmp_path, toy_registered):
    """One more descriptor gives its own table (caption, rows), a --benchmark choice, its chart, its comparison
    section and its samples (read by its own reader) in the HTML page."""
    path, samples = _toy_run(tmp_path)
    runs = load_runs([path], samples)
    assert [s.record["prompt"] for s in runs[0].samples[TOY]] == ["toy prompt text"]
    text = table.leaderboard(runs, "markdown")
    assert "**Toybench (higher is better)**" in text and "61.50" in text
    assert TOY in benchmarks.families()
    with pytest.raises(SystemExit, match="no ESC-Eval or MLLMGuard or Toybench rows"):
        table.leaderboard(runs, "markdown", ("esc_eval",))
    page = html.build_report(runs, resamples=10)
    assert "<h1>ESC-Eval / MLLMGuard / Toybench report</h1>" in page
    assert "<h3>Toybench (higher is better)</h3>" in page and "Toybench chart: no CI" in page
    assert "toy prompt text" in page and "toy answer text" in page


def test_merge_and_samples_follow_the_registered_descriptors(tmp_path, toy_registered):
    """Merge copies a registered benchmark's entries; a samples file of an unregistered task is refused with a
    message naming every registered benchmark."""
    path, _ = _toy_run(tmp_path / "toy")
    into, _ = write_run(tmp_path / "other", "toy-model", {"arc_easy": {"acc,none": 0.5}})
    assert merge.merge_files(into, [path])
    assert json.loads(into.read_text("utf-8"))["results"][TOY] == {"score,none": 61.5}
    _, (stray,) = write_run(tmp_path / "stray", "m", {}, {"arc_easy": [{"doc_id": 0}]})
    with pytest.raises(ReportInputError, match="is not an ESC-Eval or MLLMGuard or Toybench task"):
        read_samples(stray)


class ToySample(GuardSample):
    """A logged record like MLLMGuard's, keyed as the toy benchmark's own."""

    @property
    def key(self) -> tuple[Any, ...]:
        return (TOY, self.record["query_id"])


def _toy_judged(sample, dimension, value, where):
    return "score", 5, sample.record["score"]


TOYBENCH_LABELLED = replace(
    TOYBENCH,
    read_sample=lambda task, line: ToySample(task, line["toy"]),
    labels=LabelFormat(
        ("toy_id", "toy_score"), lambda item, where: ((TOY, item["toy_id"]), {"": item["toy_score"]}), _toy_judged
    ),
)


def test_agreement_reads_a_registered_benchmarks_labels(tmp_path, monkeypatch):
    """``report agreement`` pairs the labels of a registered benchmark through its descriptor's label format (its
    own fields, key and scale), and a line of no known format names every registered format."""
    monkeypatch.setattr(benchmarks, "BENCHMARKS", (*benchmarks.BENCHMARKS, TOYBENCH_LABELLED))
    records = [{"query_id": f"q-{i}", "score": i % 3, "prompt": "p", "response": "r"} for i in range(4)]
    _, samples = write_run(
        tmp_path,
        "toy-model",
        {TOY: {"score,none": 1.0}},
        {TOY: [{"doc_id": i, "toy": r} for i, r in enumerate(records)]},
    )
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"toy_id": f"q-{i}", "toy_score": [0, 1, 2, 2][i]}) + "\n" for i in range(4)))
    result = agreement.report([labels], samples, resamples=50)
    (row,) = result["rows"]
    assert (row["benchmark"], row["dimension"], row["n"], row["acc"]["value"]) == (TOY, "score", 4, 75.0)
    assert result["unmatched"] == {"labels_without_sample": [], "samples_without_label": []}
    labels.write_text(json.dumps({"card": 1}) + "\n")
    with pytest.raises(ReportInputError, match=r"labels.jsonl:1: needs either .*toy_id \+ toy_score \(Toybench\)"):
        agreement.read_labels(labels)


def test_tasks_belong_to_the_longest_matching_prefix():
    """The demo group's tasks are the demo descriptor's (reported apart as DEMO DATA), never the benchmark's;
    another harness task belongs to no benchmark."""
    assert benchmarks.benchmark_of("mllmguard_demo_privacy") is MLLMGUARD_DEMO
    assert benchmarks.benchmark_of("mllmguard_demo") is MLLMGUARD_DEMO
    assert benchmarks.benchmark_of("mllmguard_privacy") is MLLMGUARD
    assert benchmarks.benchmark_of("esc_eval_zh") is ESC_EVAL
    assert benchmarks.benchmark_of("arc_easy") is None
    assert benchmarks.families() == ("esc_eval", "mllmguard")
