"""Reading lm-eval / lmms-eval results files and our tasks' logged samples: the one place every report
command gets its numbers, model identities and per-sample records from.

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
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from esc_guard_tasks.esc_eval.protocol import Transcript
from esc_guard_tasks.esc_eval.rubric import dimensions
from esc_guard_tasks.esc_eval.settings import parse_kv

OUR_TASK_PREFIXES = ("esc_eval", "mllmguard")
FILTER = "none"
ESC_LANGUAGES = ("en", "zh")
MLLMGUARD_GROUP = "mllmguard"
MLLMGUARD_DEMO_GROUP = "mllmguard_demo"  # esc-guard demo mllmguard: DEMO DATA, reported apart, never as mllmguard
MLLMGUARD_METRICS = ("asd", "par")
MODEL_PATH_ARGS = ("pretrained", "model", "path", "model_name", "model_id")
_RESULTS_NAME = re.compile(r"^(?:results_(?P<a>.+)\.json|(?P<b>.+)_results\.json)$")
_SAMPLES_NAME = re.compile(r"^(?:samples_(?P<task_a>.+)_(?P<a>[^_]+)\.jsonl|(?P<b>.+)_samples_(?P<task_b>.+)\.jsonl)$")


class ReportInputError(ValueError):
    """A results, samples or label file that cannot be used; the message names the file (and line)."""


@cache
def esc_dimensions() -> tuple[str, ...]:
    """The seven ESC-Eval dimension metric names, in the paper's column order."""
    return tuple(d.metric for d in dimensions())


def is_our_task(name: str) -> bool:
    return name.startswith(OUR_TASK_PREFIXES)


def esc_task(language: str) -> str:
    return f"esc_eval_{language}"


def mllmguard_task(dimension: str, group: str = MLLMGUARD_GROUP) -> str:
    return f"{group}_{dimension}"


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


@dataclass
class Verdict:
    dimension: str
    score: int | None
    raw: str


@dataclass
class EscSample:
    """One judged (or unjudged) ESC-Eval dialogue: identity = (card_id, language), plus the trial when the run
    played each card several times (``trials``; trial 0 keeps the single-trial identity, so runs still pair)."""

    task: str
    card_id: int
    language: str
    transcript: Transcript
    verdicts: list[Verdict]
    trial: int = 0

    @property
    def key(self) -> tuple[Any, ...]:
        return ("esc_eval", self.card_id, self.language, *((self.trial,) if self.trial else ()))

    def score(self, dimension: str) -> int | None:
        return next((v.score for v in self.verdicts if v.dimension == dimension), None)


@dataclass
class GuardSample:
    """One MLLMGuard query as lmms-eval logged it: our ``judge`` record (ids, prompt, answer, verdict)."""

    task: str
    record: dict[str, Any]

    @property
    def key(self) -> tuple[Any, ...]:
        return ("mllmguard", self.record["query_id"])


Sample = EscSample | GuardSample


def _esc_sample(task: str, line: dict[str, Any]) -> EscSample:
    response = line["filtered_resps"]
    record = json.loads(response[0] if isinstance(response, list) else response)
    judged = "verdicts" in record
    transcript = Transcript.from_dict(record["transcript"] if judged else record)
    verdicts = [Verdict(v["dimension"], v["score"], v["raw"]) for v in record.get("verdicts", [])]
    trial = int((line.get("doc") or {}).get("trial", 0))
    return EscSample(task, transcript.card_id, transcript.language, transcript, verdicts, trial)


def nonblank_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a JSON Lines file; an unreadable file is an error naming it."""
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except OSError as error:
        raise ReportInputError(f"{path}: {error}") from error
    for number, text in enumerate(lines, 1):
        if text.strip():
            yield number, text


def read_samples(path: Path) -> tuple[str, list[Sample]]:
    """(task, samples) of one logged-samples file of our tasks; errors name the file and line."""
    found = _SAMPLES_NAME.match(Path(path).name)
    if not found:
        raise ReportInputError(
            f"{path}: not a samples file name (samples_<task>_<date>.jsonl or <date>_samples_<task>.jsonl)"
        )
    task = found.group("task_a") or found.group("task_b")
    if not is_our_task(task):
        raise ReportInputError(f"{path}: task {task!r} is not an ESC-Eval or MLLMGuard task")
    samples: list[Sample] = []
    for number, text in nonblank_lines(path):
        try:
            line = json.loads(text)
            if task.startswith("mllmguard"):
                record = line["judge"]
                if not isinstance(record, dict) or "query_id" not in record:
                    raise KeyError("judge.query_id")
                samples.append(GuardSample(task, record))
            else:
                samples.append(_esc_sample(task, line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as error:
            raise ReportInputError(f"{path}: line {number}: not a logged sample of {task} ({error!r})") from error
    return task, samples


def load_runs(results_paths: Sequence[Path], samples_paths: Sequence[Path] = (), *, force: bool = False) -> list[Run]:
    """Results files, each with the samples files of its run, checked to belong to it (``check_pairing``).

    A samples file belongs to the results file with the same date stamp (the same folder when several have
    it). A run given twice, or a sample that appears twice in a run, is always refused; a samples file of no
    given run, or one that does not match its results file, is refused unless ``force`` (then it is used
    with a warning on stderr, and with one results file an unmatched samples file goes to it)."""
    runs = [Run(Path(p), read_json(Path(p))) for p in results_paths]
    _refuse_duplicate_runs(runs)
    seen: dict[tuple[int, tuple[Any, ...]], Path] = {}
    for path in map(Path, samples_paths):
        found = _SAMPLES_NAME.match(path.name)
        stamp = found and (found.group("a") or found.group("b"))
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
