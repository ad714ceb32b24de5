"""``esc-guard report agreement``: how well the judge agrees with human labels, per dimension.

The statistics the ESC-Eval paper compares judges with (Table 4: ACC, ACC_soft) plus Pearson, Spearman
(``scipy.stats``) and Krippendorff's alpha, ordinal (the ``krippendorff`` package), each with a 95% bootstrap
interval (fixed seed) over the labelled items. ACC and ACC_soft (within one point) are in percent.

Label file: JSON Lines, one labelled item per line, keyed by the identity our logged samples carry; each
benchmark's descriptor says how its lines read (``LabelFormat``, in ``report/esc.py`` and ``report/guard.py``).

* ESC-Eval (scores 0–4; any subset of the seven dimensions; ``null`` = not labelled)::

    {"card_id": 32025, "language": "en", "scores": {"fluency": 3, "empathy": 2, "overall": 1}}

* MLLMGuard (``query_id`` as in the samples' ``judge`` record; 0–3, hallucination 0/1)::

    {"query_id": "privacy/all/1/single", "score": 2}

Errors name the file and line. Labels without a judged sample and judged samples without a label are
reported (never dropped silently); a judge reply that is not a valid score counts as ``judge_invalid``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esc_guard_tasks.report import benchmarks
from esc_guard_tasks.report.benchmark import LabelFormat, Sample
from esc_guard_tasks.report.results import ReportInputError, nonblank_lines
from esc_guard_tasks.report.runs import load_runs, read_samples
from esc_guard_tasks.report.stats import RESAMPLES, SEED, Estimate, bootstrap

STATISTICS = ("acc", "acc_soft", "pearson", "spearman", "krippendorff_alpha")


@dataclass(frozen=True)
class Label:
    key: tuple[Any, ...]
    dimension: str
    value: int
    where: str  # file:line


def label_formats() -> list[tuple[str, LabelFormat]]:
    """(benchmark title, label format) of the registered benchmarks, each format once (a demo shares its
    benchmark's), the fewest fields first."""
    formats: dict[LabelFormat, str] = {}
    for benchmark in benchmarks.BENCHMARKS:
        if benchmark.labels is not None:
            formats.setdefault(benchmark.labels, benchmark.title)
    return sorted(((title, f) for f, title in formats.items()), key=lambda pair: len(pair[1].fields))


def read_labels(path: Path) -> list[Label]:
    """Parse a label file (format in the module docstring); errors name the file and line."""
    labels: list[Label] = []
    seen: dict[tuple[Any, ...], str] = {}
    formats = label_formats()
    for number, text in nonblank_lines(path):
        where = f"{path}:{number}"
        try:
            item = json.loads(text)
        except json.JSONDecodeError as error:
            raise ReportInputError(f"{where}: not JSON ({error})") from error
        if not isinstance(item, dict):
            raise ReportInputError(f"{where}: expected a JSON object")
        matches = [(title, f) for title, f in formats if set(f.fields) <= set(item)]
        if len(matches) != 1:
            shapes = " or ".join(f"{f.shape} ({title})" for title, f in (matches or formats))
            raise ReportInputError(f"{where}: needs {'only one of' if matches else 'either'} {shapes}")
        key, values = matches[0][1].read(item, where)
        if key in seen:
            raise ReportInputError(f"{where}: item {key[1:]} is labelled twice (first at {seen[key]})")
        seen[key] = where
        labels += [Label(key, d, v, where) for d, v in values.items() if v is not None]
    return labels


@dataclass
class Pairs:
    """Human and judge scores of one benchmark dimension on the same items."""

    scale_max: int
    human: list[int] = field(default_factory=list)
    judge: list[int] = field(default_factory=list)
    judge_invalid: int = 0


def pair_up(labels: list[Label], samples: list[Sample]) -> tuple[dict[tuple[str, str], Pairs], dict[str, list]]:
    """Pairs per (benchmark, dimension), and what could not be paired (labels without a sample, samples
    without a label)."""
    by_key: dict[tuple[Any, ...], Sample] = {}
    sample: Sample | None
    for sample in samples:
        if sample.key in by_key:
            raise ReportInputError(f"judged sample {sample.key[1:]} appears twice in the samples given")
        by_key[sample.key] = sample
    pairs: dict[tuple[str, str], Pairs] = {}
    unmatched_labels: list[Any] = []
    labelled: set[tuple[Any, ...]] = set()
    for label in labels:
        sample = by_key.get(label.key)
        if sample is None:
            unmatched_labels.append(f"{label.where}: {label.key[0]} {label.key[1:]}")
            continue
        labelled.add(label.key)
        owner = benchmarks.benchmark_of(sample.task)
        assert owner is not None and owner.labels is not None, sample.task  # its key came from a label format
        dimension, top, judged = owner.labels.judged(sample, label.dimension, label.value, label.where)
        entry = pairs.setdefault((label.key[0], dimension), Pairs(top))
        if isinstance(judged, int) and not isinstance(judged, bool):
            entry.human.append(label.value)
            entry.judge.append(judged)
        else:
            entry.judge_invalid += 1
    unlabelled = [f"{k[0]} {k[1:]}" for k in by_key if k not in labelled]
    unmatched_labels = list(dict.fromkeys(unmatched_labels))
    return pairs, {"labels_without_sample": unmatched_labels, "samples_without_label": unlabelled}


def _alpha(human: np.ndarray, judge: np.ndarray, top: int) -> float:
    import krippendorff

    try:
        return float(
            krippendorff.alpha(
                reliability_data=np.vstack([human, judge]).astype(float),
                level_of_measurement="ordinal",
                value_domain=list(range(top + 1)),
            )
        )
    except (ValueError, ZeroDivisionError):
        return math.nan


def _statistics(top: int) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    from scipy import stats

    def correlation(function: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
        return lambda h, j: float(function(h, j).statistic) if len(h) > 1 else math.nan

    return {
        "acc": lambda h, j: 100.0 * float(np.mean(h == j)),
        "acc_soft": lambda h, j: 100.0 * float(np.mean(np.abs(h - j) <= 1)),
        "pearson": correlation(stats.pearsonr),
        "spearman": correlation(stats.spearmanr),
        "krippendorff_alpha": lambda h, j: _alpha(h, j, top),
    }


def agreement(pairs: Pairs, seed: int = SEED, resamples: int = RESAMPLES) -> dict[str, Estimate]:
    """Every statistic with its bootstrap interval (items resampled as pairs)."""
    human, judge = np.array(pairs.human), np.array(pairs.judge)
    return {
        name: bootstrap(
            len(human),
            lambda i, f=function: f(human[i], judge[i]),  # type: ignore[misc]  # mypy cannot type a defaulted lambda
            seed=seed,
            resamples=resamples,
        )
        for name, function in _statistics(pairs.scale_max).items()
    }


def report(
    label_paths: list[Path],
    sample_paths: list[Path],
    seed: int = SEED,
    resamples: int = RESAMPLES,
    results_paths: list[Path] | None = None,
    force: bool = False,
) -> dict:
    """With ``results_paths`` the judged samples must belong to those runs, as for ``report html``."""
    labels = [label for path in label_paths for label in read_labels(path)]
    if results_paths:
        runs = load_runs(results_paths, sample_paths, force=force)
        samples = [sample for run in runs for found in run.samples.values() for sample in found]
    else:
        samples = [sample for path in sample_paths for sample in read_samples(path)[1]]
    pairs, unmatched = pair_up(labels, samples)
    rows = []
    for (benchmark, dimension), entry in sorted(pairs.items()):
        estimates = agreement(entry, seed, resamples)
        rows.append(
            {
                "benchmark": benchmark,
                "dimension": dimension,
                "n": len(entry.human),
                "judge_invalid": entry.judge_invalid,
            }
            | {name: asdict(estimate) for name, estimate in estimates.items()}
        )
    return {"seed": seed, "resamples": resamples, "rows": rows, "unmatched": unmatched}


def _cell(estimate: dict[str, float]) -> str:
    value, low, high = estimate["value"], estimate["low"], estimate["high"]
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if math.isnan(low) else f"{value:.2f} [{low:.2f}, {high:.2f}]"


def to_markdown(result: dict) -> str:
    import pandas as pd

    frame = pd.DataFrame(
        [{k: (_cell(v) if k in STATISTICS else v) for k, v in row.items()} for row in result["rows"]],
        columns=["benchmark", "dimension", "n", "judge_invalid", *STATISTICS],
    )
    lines = [
        f"Judge vs human labels (95% bootstrap CI, seed {result['seed']}, {result['resamples']} resamples)",
        "",
        frame.to_markdown(index=False),
        "",
    ]
    for what, items in result["unmatched"].items():
        lines.append(f"{what.replace('_', ' ')}: {len(items)}")
        lines += [f"  {item}" for item in items]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--human", type=Path, nargs="+", required=True, help="label files (JSON Lines, see above)")
    parser.add_argument("--judged", type=Path, nargs="+", required=True, help="logged samples files of our tasks")
    parser.add_argument("--seed", type=int, default=SEED, help="bootstrap seed (default %(default)s)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    parser.add_argument("--results", type=Path, nargs="+", help="results files the judged samples must belong to")
    parser.add_argument("--force", action="store_true", help="with --results: use samples that do not match")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = report(args.human, args.judged, args.seed, args.resamples, args.results, args.force)
    print(json.dumps(result, indent=2) if args.json else to_markdown(result), end="\n" if args.json else "")
    return 0
