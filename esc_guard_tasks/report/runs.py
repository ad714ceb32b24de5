"""Runs as the report commands take them: results files, each with its logged samples read by the sample
reader of the benchmark that owns the task (``benchmarks``) and checked to belong to it."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from esc_guard_tasks.report.benchmark import Sample
from esc_guard_tasks.report.benchmarks import benchmark_of, titles
from esc_guard_tasks.report.results import (
    ReportInputError,
    Run,
    nonblank_lines,
    pairing_problem,
    read_json,
    run_stamp,
    samples_file,
)


def read_samples(path: Path) -> tuple[str, list[Sample]]:
    """(task, samples) of one logged-samples file of our tasks; errors name the file and line."""
    named = samples_file(path)
    if named is None:
        raise ReportInputError(
            f"{path}: not a samples file name (samples_<task>_<date>.jsonl or <date>_samples_<task>.jsonl)"
        )
    task = named[0]
    benchmark = benchmark_of(task)
    if benchmark is None:
        raise ReportInputError(f"{path}: task {task!r} is not an {titles()} task")
    samples: list[Sample] = []
    for number, text in nonblank_lines(path):
        try:
            samples.append(benchmark.read_sample(task, json.loads(text)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as error:
            raise ReportInputError(f"{path}: line {number}: not a logged sample of {task} ({error!r})") from error
    return task, samples


def load_runs(results_paths: Sequence[Path], samples_paths: Sequence[Path] = (), *, force: bool = False) -> list[Run]:
    """Results files, each with the samples files of its run, checked to belong to it (``pairing_problem``).

    A samples file belongs to the results file with the same date stamp (the same folder when several have
    it). A run given twice, or a sample that appears twice in a run, is always refused; a samples file of no
    given run, or one that does not match its results file, is refused unless ``force`` (then it is used
    with a warning on stderr, and with one results file an unmatched samples file goes to it)."""
    runs = [Run(Path(p), read_json(Path(p))) for p in results_paths]
    _refuse_duplicate_runs(runs)
    seen: dict[tuple[int, tuple[Any, ...]], Path] = {}
    for path in map(Path, samples_paths):
        named = samples_file(path)
        stamp = named and named[1]
        owners = [r for r in runs if run_stamp(r.path) == stamp]
        if len(owners) > 1:
            owners = [r for r in owners if r.path.parent == path.parent]
        task, samples = read_samples(path)
        if len(owners) != 1:
            if not (force and len(runs) == 1):
                raise ReportInputError(
                    f"{path}: matches no results file given (expected one with date stamp {stamp}, the same folder"
                    " when several have it); pass --force to use it with a single results file anyway"
                )
            owners = runs
            _warn(f"{path}: date stamp {stamp} is not that of {runs[0].path}; used anyway (--force)")
        run = owners[0]
        problem = pairing_problem(run, task, path)
        if problem:
            message = f"{path} does not match its results file {run.path}: {problem}"
            if not force:
                raise ReportInputError(f"{message}; pass --force to use it anyway")
            _warn(f"{message}; used anyway (--force)")
        for sample in samples:
            where = (id(run), sample.key)
            if where in seen:
                raise ReportInputError(
                    f"{path}: sample {sample.key[1:]} appears twice in the samples of {run.path}"
                    f" (also in {seen[where]}); give each run's samples once"
                )
            seen[where] = path
        run.samples.setdefault(task, []).extend(samples)
    return runs


def _refuse_duplicate_runs(runs: list[Run]) -> None:
    """The same results file twice (by path, or a copy: same model, start time and task hashes) is refused."""
    seen: dict[Any, Path] = {}
    for run in runs:
        results = run.results
        started = results.get("date", results.get("start_time"))
        keys: list[tuple[Any, ...]] = [("path", run.path.resolve())]
        if started is not None:
            keys.append(("run", run.model, str(started), json.dumps(results.get("task_hashes"), sort_keys=True)))
        for key in keys:
            if key in seen:
                raise ReportInputError(f"{run.path}: the same run as {seen[key]} (given twice); give each run once")
            seen[key] = run.path


def _warn(message: str) -> None:
    print(f"esc-guard: warning: {message}", file=sys.stderr)
