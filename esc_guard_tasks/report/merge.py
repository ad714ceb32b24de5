"""``esc-guard report merge``: put our tasks' rows into a model's existing lm-eval / lmms-eval results file.

Only the entries of ESC-Eval and MLLMGuard tasks and groups are copied, section by section; every other
row of the existing file stays as it was. The same model is required (``model_name`` and the checkpoint in
``config.model_args``) unless ``--force``. Merging is idempotent, and the file is replaced atomically
(written to a temporary file in the same folder, then ``os.replace``), so an interrupted merge leaves
the old file intact.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from esc_guard_tasks.report.benchmarks import is_our_task, titles
from esc_guard_tasks.report.results import ReportInputError, model_identity, read_json

SECTIONS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples")


class ModelMismatchError(ReportInputError):
    """The results to merge are of another model than the existing file."""


def check_same_model(existing: dict[str, Any], new: dict[str, Any], existing_path: Path, new_path: Path) -> None:
    ours, theirs = model_identity(existing), model_identity(new)
    shared = set(ours) & set(theirs)
    differing = {k: (ours[k], theirs[k]) for k in shared if ours[k] != theirs[k]}
    if differing or not shared:
        detail = (
            "; ".join(f"{k}: {a!r} vs {b!r}" for k, a, b in ((k, *v) for k, v in sorted(differing.items())))
            or f"no common model field ({sorted(ours)} vs {sorted(theirs)})"
        )
        raise ModelMismatchError(
            f"{new_path} is not a run of the model of {existing_path} ({detail}); use --force to merge anyway"
        )


def merge_results(existing: dict[str, Any], new: dict[str, Any], source: Path) -> dict[str, Any]:
    """``existing`` with our tasks' entries of every section taken from ``new`` (a new dict)."""
    merged = json.loads(json.dumps(existing))
    copied = 0
    for section in SECTIONS:
        entries = {k: v for k, v in (new.get(section) or {}).items() if is_our_task(k)}
        if entries:
            merged.setdefault(section, {}).update(json.loads(json.dumps(entries)))
            copied += len(entries)
    if not copied:
        raise ReportInputError(f"{source}: holds no {titles()} entries to merge")
    return merged


def dump(data: dict[str, Any]) -> str:
    """JSON as the harnesses write it (indent 2, UTF-8; NaN stays NaN)."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` via a temporary file in the same folder + ``os.replace``."""
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(handle.name, path.stat().st_mode & 0o777)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def merge_files(into: Path, new_paths: list[Path], force: bool = False) -> bool:
    """Merge every file of ``new_paths`` into ``into``; True when the file changed."""
    existing = read_json(into)
    merged = existing
    for path in new_paths:
        new = read_json(path)
        if not force:
            check_same_model(existing, new, into, path)
        merged = merge_results(merged, new, path)
    text = dump(merged)
    if text == dump(existing):  # compared as text: NaN != NaN in Python
        return False
    write_atomically(into, text)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("new", type=Path, nargs="+", help="results files of ESC-Eval / MLLMGuard runs")
    parser.add_argument("--into", type=Path, required=True, help="the model's existing results file (updated)")
    parser.add_argument("--force", action="store_true", help="merge even if the model differs")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    changed = merge_files(args.into, args.new, args.force)
    print(f"{args.into}: {'updated' if changed else 'already up to date'}")
    return 0
