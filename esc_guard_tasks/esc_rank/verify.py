"""``esc-guard verify esc-rank``: does this judge setup reproduce the reference's own ESC-RANK scores?

The reference repository ships 12 example dialogues (``result/2024-06-24/*.json``: Qwen-7B and Llama-3
supporters × EN/ZH × 3 cards) and the scores its own ESC-RANK scorer gave them (``score/*.json``: 7 per
dialogue, 84 verdicts). They are judged here through exactly the code path of a real run — the same judge
inputs (``judging.score_dialogues``), backend construction (``judging.build_backend``: conversion, adapters,
dtype), and strict parsing — with the judge cache off, and compared verdict by verdict.

The default ``--min-agreement`` is 0.97, i.e. at least 82 of 84 exact. The reference scores are nearly
constant per dimension: a judge that ignored the dialogue and answered each dimension's most common score
would already match 80 of 84 (printed with each run), so the bar must lie above that; ESC-RANK answers one
greedy digit, so the same weights disagree only where float16 numerics on other hardware flip a near tie, and
up to two such flips are tolerated.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from esc_guard_tasks.esc_eval.protocol import Language, Transcript
from esc_guard_tasks.judges.base import JudgeBackend

RESULT_FOLDER = "result/2024-06-24"
SCORE_FOLDER = "score"
# The examples at the pinned reference commit (what is fetched without --data-dir).
REFERENCE_FILES = tuple(f"{model}_{language}.json" for model in ("Qwen_7B", "llama3") for language in ("en", "zh"))
DEFAULT_MIN_AGREEMENT = 0.97


class VerifyDataError(ValueError):
    """The reference examples cannot be read; the message names the file (and record) and both ways to get them."""


@dataclass(frozen=True)
class Example:
    """One reference dialogue and the reference scorer's verdicts for it (adapter key → 0–4)."""

    file: str
    dialogue: str
    transcript: Transcript
    reference: dict[str, int]


@dataclass(frozen=True)
class Comparison:
    """One verdict: ours (strict score, None = invalid) against the reference's."""

    example: Example
    dimension: str  # the metric name users see (fluency, expression, …)
    key: str  # the adapter key the reference's score files use (fluency, diversity, …)
    ours: int | None
    reference: int
    raw: str

    @property
    def exact(self) -> bool:
        return self.ours == self.reference

    @property
    def within_one(self) -> bool:
        return self.ours is not None and abs(self.ours - self.reference) <= 1


def _language(file_name: str) -> Language:
    """As the reference scorer decides: ``zh`` if the file name contains it."""
    return "zh" if "zh" in file_name else "en"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise VerifyDataError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise VerifyDataError(f"{path}: cannot read {what} ({err})") from None
    if not isinstance(data, dict):
        raise VerifyDataError(f"{path}: {what} must be a JSON object keyed by dialogue, got {type(data).__name__}")
    return data


def _examples(name: str, result_file: Path, score_file: Path) -> list[Example]:
    """The dialogues of one upstream result file (``name``: its upstream file name) with their scores."""
    from esc_guard_tasks.esc_eval.rubric import dimensions

    keys = [d.key for d in dimensions()]
    dialogues = _read_json(result_file, "example dialogues")
    scores = _read_json(score_file, "reference ESC-RANK scores")
    if set(dialogues) != set(scores):
        raise VerifyDataError(
            f"{score_file}: scores dialogues {sorted(scores)} but {result_file} holds {sorted(dialogues)}"
        )
    examples: list[Example] = []
    for dialogue, lines in dialogues.items():
        where = f"{result_file}: dialogue {dialogue}"
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise VerifyDataError(f"{where}: expected a list of transcript strings")
        try:
            transcript = Transcript.from_reference_lines(lines, len(examples), _language(name))
        except ValueError as err:
            raise VerifyDataError(f"{where}: {err}") from None
        verdicts = scores[dialogue]
        if not isinstance(verdicts, dict) or sorted(verdicts) != sorted(keys):
            raise VerifyDataError(f"{score_file}: dialogue {dialogue}: expected the scores of {', '.join(keys)}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4 for v in verdicts.values()):
            raise VerifyDataError(f"{score_file}: dialogue {dialogue}: every score must be an integer 0–4")
        examples.append(Example(name, dialogue, transcript, dict(verdicts)))
    return examples


def load_examples(data_dir: Path | None) -> list[Example]:
    """The examples from a local copy laid out as upstream, or fetched from the pinned reference commit."""
    if data_dir is not None:
        results = sorted((data_dir / RESULT_FOLDER).glob("*.json"))
        if not results:
            raise VerifyDataError(
                f"{data_dir / RESULT_FOLDER}: no example dialogues (*.json); --data-dir must be a copy of the"
                " reference repository (or a folder laid out like it: result/2024-06-24/*.json and score/*.json)"
            )
        files = [(path.name, path, data_dir / SCORE_FOLDER / path.name) for path in results]
    else:
        files = [(name, _fetch(name, RESULT_FOLDER), _fetch(name, SCORE_FOLDER)) for name in REFERENCE_FILES]
    return [example for name, result, score in files for example in _examples(name, result, score)]


def _fetch(name: str, folder: str) -> Path:
    """Through the role cards' downloader (pinned commit, ``datasets``' cache)."""
    from esc_guard_tasks.esc_eval.cards import UPSTREAM_COMMIT, UPSTREAM_REPO, CardError, fetch_upstream

    try:
        return fetch_upstream(name, folder=folder)
    except CardError as err:
        raise VerifyDataError(
            f"could not fetch {folder}/{name} of {UPSTREAM_REPO}@{UPSTREAM_COMMIT[:7]} (no network access?)."
            f" Either pass --data-dir DIR, a local copy of {UPSTREAM_REPO} (or any folder with {RESULT_FOLDER}/*.json"
            f" and {SCORE_FOLDER}/*.json laid out as upstream), or run where raw.githubusercontent.com is reachable"
        ) from err


def build_judge(judge_backend: str, judge_args: str) -> JudgeBackend:
    """ESC-RANK as a run builds it from its settings (conversion, adapters, dtype), without the judge cache."""
    from esc_guard_tasks.esc_eval.judging import build_backend
    from esc_guard_tasks.esc_eval.settings import ESCSettings

    return build_backend(ESCSettings(judge="esc_rank", judge_backend=judge_backend, judge_args=judge_args))


def compare(examples: Sequence[Example], judge: JudgeBackend) -> list[Comparison]:
    """Judge every example with a run's judge inputs and parsing; pair each verdict with the reference's."""
    from esc_guard_tasks.esc_eval.judging import score_dialogues
    from esc_guard_tasks.esc_eval.rubric import dimensions

    verdicts = score_dialogues(judge, [e.transcript for e in examples], "esc_rank")
    return [
        Comparison(example, d.metric, d.key, v.score, example.reference[d.key], v.raw)
        for example, judged in zip(examples, verdicts, strict=True)
        for d, v in zip(dimensions(), judged, strict=True)
    ]


def _share(items: Sequence[Comparison], test: str = "exact") -> str:
    hits = sum(getattr(c, test) for c in items)
    return f"{hits}/{len(items)} ({100 * hits / len(items):.1f}%)" if items else "0/0"


def report(comparisons: Sequence[Comparison]) -> str:
    """The agreement table: overall, per dimension, per language, within ±1, and every disagreement."""
    lines = [f"exact agreement: {_share(comparisons)}", f"within ±1:       {_share(comparisons, 'within_one')}"]
    modes = {
        k: Counter(c.reference for c in comparisons if c.key == k).most_common(1)[0][0] for k in _keys(comparisons)
    }
    baseline = sum(c.reference == modes[c.key] for c in comparisons)
    lines.append(
        f"(a judge answering each dimension's most common reference score would match {baseline}/{len(comparisons)})"
    )
    lines += ["", "per dimension:"]
    for key in _keys(comparisons):
        rows = [c for c in comparisons if c.key == key]
        lines.append(f"  {rows[0].dimension:<12} ({key:<10}) {_share(rows)}")
    lines += ["", "per language:"]
    for language in ("en", "zh"):
        rows = [c for c in comparisons if c.example.transcript.language == language]
        if rows:
            lines.append(f"  {language}  {_share(rows)}")
    disagreements = [c for c in comparisons if not c.exact]
    lines += ["", f"disagreements: {len(disagreements)}"]
    for c in disagreements:
        ours = "invalid" if c.ours is None else c.ours
        lines.append(
            f"  {c.example.file} dialogue {c.example.dialogue} {c.dimension} ({c.key}):"
            f" ours {ours}, reference {c.reference}, raw reply {c.raw!r}"
        )
    return "\n".join(lines)


def _keys(comparisons: Sequence[Comparison]) -> list[str]:
    return list(dict.fromkeys(c.key for c in comparisons))


def run(args: argparse.Namespace) -> int:
    """Print the agreement table; exit 0 only when exact agreement reaches ``--min-agreement``."""
    if not 0 <= args.min_agreement <= 1:
        raise SystemExit(f"--min-agreement must be a share between 0 and 1, got {args.min_agreement}")
    try:
        examples = load_examples(args.data_dir)
    except VerifyDataError as err:
        raise SystemExit(f"esc-guard verify esc-rank: {err}") from None
    judge = build_judge(args.judge_backend, args.judge_args)
    print(f"judge: {json.dumps(judge.identity(), ensure_ascii=False, default=str)}")
    comparisons = compare(examples, judge)
    print(report(comparisons))
    agreement = sum(c.exact for c in comparisons) / len(comparisons)
    passed = agreement >= args.min_agreement
    print(
        f"\n{'PASS' if passed else 'FAIL'}: exact agreement {agreement:.3f}"
        f" {'>=' if passed else '<'} --min-agreement {args.min_agreement}"
    )
    return 0 if passed else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``verify esc-rank``: the subcommand and its options."""
    what = parser.add_subparsers(dest="judge_to_verify", required=True)
    esc_rank = what.add_parser(
        "esc-rank",
        help="judge the reference's 12 example dialogues and compare with its own ESC-RANK scores",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    esc_rank.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="a local copy of the reference repository (result/2024-06-24/*.json, score/*.json);"
        " default: fetched from the pinned commit",
    )
    esc_rank.add_argument(
        "--judge-backend", default="hf", choices=["hf", "vllm", "openai"], help="where the judge runs (default hf)"
    )
    esc_rank.add_argument("--judge-args", default="", help="k=v,… as the judge_args setting of a run")
    esc_rank.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help=f"exact agreement (share of verdicts) needed to exit 0 (default {DEFAULT_MIN_AGREEMENT}: >= 82 of 84)",
    )
    esc_rank.set_defaults(run=run)
