"""Reading lm-eval / lmms-eval results files: the one place every report command gets its numbers and model
identities from, and what ties a logged-samples file to its results file (``runs`` reads the samples).

Both harnesses write ``results`` (per task), ``groups``, ``configs``, … and a top-level ``model_name`` /
``config.model_args`` (a dict in lm-eval, a ``k=v,…`` string in lmms-eval); metric keys are
``<metric>,<filter>`` (our tasks use the ``none`` filter). lmms-eval writes bare ``NaN`` tokens, which
Python's json reads. Samples: lm-eval logs ``samples_<task>_<date>.jsonl`` next to ``results_<date>.json``;
lmms-eval ``<date>_samples_<task>.jsonl`` next to ``<date>_results.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esc_guard_tasks.esc_eval.settings import parse_kv
from esc_guard_tasks.report.benchmark import Sample

FILTER = "none"
MODEL_PATH_ARGS = ("pretrained", "model", "path", "model_name", "model_id")
_RESULTS_NAME = re.compile(r"^(?:results_(?P<a>.+)\.json|(?P<b>.+)_results\.json)$")
_SAMPLES_NAME = re.compile(r"^(?:samples_(?P<task_a>.+)_(?P<a>[^_]+)\.jsonl|(?P<b>.+)_samples_(?P<task_b>.+)\.jsonl)$")


class ReportInputError(ValueError):
    """A results, samples or label file that cannot be used; the message names the file (and line)."""


def label_score(value: Any, top: int, where: str, what: str) -> int | None:
    """A human label's score: an integer 0–``top``, or None (``null``: not labelled); else an error naming ``where``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ReportInputError(f"{where}: {what} must be an integer 0–{top} or null, got {value!r}")
    return value


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ReportInputError(f"{path}: not a readable JSON file ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ReportInputError(f"{path}: not an lm-eval/lmms-eval results file (no 'results' object)")
    return data


def model_identity(results: dict[str, Any]) -> dict[str, str]:
    """What names the evaluated model: ``model_name`` and the checkpoint argument of ``config.model_args``
    (device, dtype or batch settings may differ between runs of the same model)."""
    identity = {}
    if results.get("model_name"):
        identity["model_name"] = str(results["model_name"])
    config = results.get("config") or {}
    args = config.get("model_args")
    parsed = parse_kv(args) if isinstance(args, (str, dict)) else {}
    for key in MODEL_PATH_ARGS:
        if parsed.get(key) not in (None, ""):
            identity["model_args." + key] = str(parsed[key])
            break
    return identity


def model_label(results: dict[str, Any]) -> str:
    identity = model_identity(results)
    return next(iter(identity.values()), "unknown model")


def metric(row: dict[str, Any] | None, name: str) -> float:
    """A metric of a results row as a float; NaN when absent, NaN-valued or not a number."""
    if not row:
        return math.nan
    value = row.get(f"{name},{FILTER}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def task_row(results: dict[str, Any], task: str) -> dict[str, Any] | None:
    """A task's or group's row (groups live in ``groups`` and, in lmms-eval, also in ``results``)."""
    return results.get("results", {}).get(task) or results.get("groups", {}).get(task)


def run_stamp(path: Path) -> str | None:
    """The date stamp that ties a results file to its samples files (both harnesses' naming)."""
    found = _RESULTS_NAME.match(Path(path).name)
    return (found.group("a") or found.group("b")) if found else None


def samples_file(path: Path) -> tuple[str, str] | None:
    """(task, date stamp) of a logged-samples file's name (both harnesses' naming), None for another name."""
    found = _SAMPLES_NAME.match(Path(path).name)
    if not found:
        return None
    return found.group("task_a") or found.group("task_b"), found.group("a") or found.group("b")


@dataclass
class Run:
    """One results file: the model, its rows, and the logged samples matched to it."""

    path: Path
    results: dict[str, Any]
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return model_label(self.results)

    @property
    def label(self) -> str:
        """Model plus run stamp: two runs of one model stay apart."""
        stamp = run_stamp(self.path)
        return f"{self.model} @ {stamp}" if stamp else self.model


def nonblank_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a JSON Lines file; an unreadable file is an error naming it."""
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except OSError as error:
        raise ReportInputError(f"{path}: {error}") from error
    for number, text in enumerate(lines, 1):
        if text.strip():
            yield number, text


def pairing_problem(run: Run, task: str, path: Path) -> str | None:
    """Why a samples file of ``task`` is not the one the results file ``run`` was written with, or None.

    Both harnesses write, per task, the number of documents (``n-samples``: ``original``, ``effective``) and a
    hash over every logged sample's ``doc_hash`` (``task_hashes``; lm-eval adds ``prompt_hash`` and
    ``target_hash``, lmms-eval the sample's position). Checked where present: the task, the sample count, each
    ``doc_id`` and the hash (which catches another run's documents or prompts and added, dropped or
    reordered lines; edits to the replies themselves are not hashed by either harness, and lmms-eval gives every
    MLLMGuard item the same ``doc_hash``, so there the hash pins only the count)."""
    results = run.results
    if task not in results.get("results", {}) and task not in results.get("configs", {}):
        return f"the results have no task {task}"
    lines = [json.loads(text) for _, text in nonblank_lines(path)]
    counts = (results.get("n-samples") or {}).get(task) or {}
    if isinstance(counts.get("effective"), int) and counts["effective"] != len(lines):
        return f"{len(lines)} samples of {task}, the results were computed on {counts['effective']}"
    total = counts.get("original")
    for number, line in enumerate(lines, 1):
        doc_id = line.get("doc_id")
        if isinstance(total, int) and not (isinstance(doc_id, int) and 0 <= doc_id < total):
            return f"line {number}: doc_id {doc_id!r} is not one of the task's {total} documents"
    expected = (results.get("task_hashes") or {}).get(task)
    if expected and all(isinstance(line.get("doc_hash"), str) for line in lines):
        named = _RESULTS_NAME.match(run.path.name)
        if not named or named.group("a"):  # lm-eval: results_<date>.json
            parts = [f"{x['doc_hash']}{x.get('prompt_hash', '')}{x.get('target_hash', '')}" for x in lines]
        else:  # lmms-eval: <date>_results.json
            parts = [f"sample_{index}{x['doc_hash']}" for index, x in enumerate(lines)]
        if hashlib.sha256("".join(parts).encode("utf-8")).hexdigest() != expected:
            return (
                f"the samples' hash is not task_hashes.{task} of the results (another run's documents or prompts,"
                " or lines added, dropped or reordered)"
            )
    return None
