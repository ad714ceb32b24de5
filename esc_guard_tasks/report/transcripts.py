"""``esc-guard transcripts``: the ESC-Eval dialogues of logged samples as plain structured records.

In a ``--log_samples`` file each dialogue is JSON inside a JSON string (lm-eval keeps responses as strings).
This writes them out for reading, sharing and re-scoring outside the harness:

* ``--format jsonl`` (default): one dialogue per line: task, doc_id, card (id, language, text, source,
  topic), the greeting, the turns with their speakers, and the judge's verdicts when the run was judged.
* ``--format reference``: the reference repository's ``result/`` layout, one ``<model>_<language>.json`` per
  language holding ``{"<doc_id>": ["AI assistant：…", "ESC-Role：…", …]}`` (the upstream ``evaluate.py``
  output, which its ``score.py`` reads; ``doc_id`` is the card's index in the task's card list).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from esc_guard_tasks.judges.base import verdicts_to_json
from esc_guard_tasks.report.esc import EscSample
from esc_guard_tasks.report.results import ReportInputError, nonblank_lines
from esc_guard_tasks.report.runs import read_samples

FORMATS = ("jsonl", "reference")


def dialogue_records(paths: list[Path]) -> list[dict[str, Any]]:
    """One record per logged ESC-Eval dialogue of ``paths``, in file and line order; errors name file and line."""
    records = []
    for path in paths:
        task, samples = read_samples(path)
        if task.startswith("mllmguard"):
            raise ReportInputError(f"{path}: {task} is an MLLMGuard task; transcripts are ESC-Eval dialogues")
        lines = [json.loads(text) for _, text in nonblank_lines(path)]
        for (number, line), sample in zip(enumerate(lines, 1), samples, strict=True):
            assert isinstance(sample, EscSample)
            doc = line.get("doc") or {}
            transcript = sample.transcript
            records.append(
                {
                    "task": task,
                    "doc_id": line.get("doc_id", number - 1),
                    "card": {
                        "id": sample.card_id,
                        "language": sample.language,
                        "text": doc.get("base"),
                        "source": doc.get("source"),
                        "topic": doc.get("topic"),
                    },
                    "greeting": transcript.greeting,
                    "turns": [{"speaker": t.speaker, "text": t.text} for t in transcript.turns],
                    "verdicts": verdicts_to_json(sample.verdicts) or None,
                }
            )
    return records


def reference_files(records: list[dict[str, Any]], model: str, sources: list[Path]) -> dict[str, dict[str, list]]:
    """``{"<model>_<language>.json": {"<doc_id>": reference lines}}``; a doc_id seen twice is an error."""
    from esc_guard_tasks.esc_eval.protocol import Transcript, Turn

    files: dict[str, dict[str, list]] = {}
    for record in records:
        name = f"{model}_{record['card']['language']}.json"
        key = str(record["doc_id"])
        dialogues = files.setdefault(name, {})
        if key in dialogues:
            raise ReportInputError(
                f"{', '.join(map(str, sources))}: two dialogues with doc_id {key} for {name}; "
                "give the samples of one run (one file per language)"
            )
        turns = [Turn(t["speaker"], t["text"]) for t in record["turns"]]
        transcript = Transcript(record["card"]["id"], record["card"]["language"], record["greeting"], turns)
        dialogues[key] = transcript.reference_lines()
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samples", type=Path, nargs="+", help="samples_<task>_<date>.jsonl files of esc_eval tasks")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="jsonl (default) or the reference layout")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="jsonl: file to write (default: stdout); reference: the folder for <model>_<language>.json (required)",
    )
    parser.add_argument("--model", default="model", help="model name in the reference file names (default: model)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _write(args)
    except ReportInputError as error:
        raise SystemExit(f"esc-guard transcripts: {error}") from None


def _write(args: argparse.Namespace) -> int:
    records = dialogue_records(args.samples)
    if args.format == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if args.output:
            args.output.write_text(text, "utf-8")
        else:
            sys.stdout.write(text)
        return 0
    if args.output is None:
        raise SystemExit("esc-guard transcripts --format reference needs --output FOLDER")
    args.output.mkdir(parents=True, exist_ok=True)
    for name, dialogues in reference_files(records, args.model, args.samples).items():
        # upstream's own formatting: json.dumps(obj, ensure_ascii=False, indent=4), no trailing newline
        (args.output / name).write_text(json.dumps(dialogues, ensure_ascii=False, indent=4), "utf-8")
        print(f"wrote {args.output / name} ({len(dialogues)} dialogues)")
    return 0
