"""Re-judge saved dialogues without regenerating them (``esc-guard rescore``).

The dialogues of a ``--log_samples`` file are replayed through lm-eval itself: the
cards are rebuilt from the samples into a temporary ``data_dir``, a replay model answers
each ``esc_dialogue`` request with the saved transcript, and the chosen judge scores
them in the task's usual ``apply_filters`` pass. Aggregation, stderrs, groups and the
output files are therefore exactly the harness's own.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM

from esc_guard_tasks.esc_eval.protocol import CARD_LANGUAGE
from esc_guard_tasks.harness import lm_eval_task  # noqa: F401 - registers the esc_dialogue request type

GROUPS = {"esc_eval": ("esc_eval_en", "esc_eval_zh"), "esc_eval_demo": ("esc_eval_demo_en", "esc_eval_demo_zh")}


class ReplayLM(LM):
    """Answers ``esc_dialogue`` requests with saved transcripts; generates nothing."""

    def __init__(self, transcripts: dict[tuple[str, int], str]):
        super().__init__()
        self.transcripts = transcripts

    def esc_dialogue(self, requests: Sequence[Any]) -> list[str]:
        return [self.transcripts[(r.doc["language"], r.doc["card_id"])] for r in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the replay model only replays saved dialogues")

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the replay model only replays saved dialogues")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the replay model only replays saved dialogues")


def read_samples(paths: Sequence[Path]) -> dict[str, list[dict[str, Any]]]:
    """Samples per task, the task named by lm-eval's file name ``samples_<task>_<date>.jsonl``."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in paths:
        if not path.name.startswith("samples_") or not path.name.endswith(".jsonl"):
            raise ValueError(f"{path}: not an lm-eval samples file (samples_<task>_<date>.jsonl)")
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            try:
                sample = json.loads(line)
                sample["doc"]["card_id"], json.loads(sample["resps"][0][0])["turns"]
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise ValueError(f"{path}: line {number} is not an ESC-Eval sample ({err!r})") from None
            by_task[task].append(sample)
    return dict(by_task)


def write_card_files(samples: dict[str, list[dict[str, Any]]], folder: Path) -> None:
    """The cards the samples were made from, in the reference card schema, as ``data_dir`` expects."""
    cards: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for task_samples in samples.values():
        for sample in task_samples:
            doc = sample["doc"]
            cards[doc["language"]][doc["card_id"]] = {
                "base": doc["base"],
                "res": doc["topic"],
                "source": doc["source"],
                "language": CARD_LANGUAGE[doc["language"]],
                "id": doc["card_id"],
            }
    for language, by_id in cards.items():
        path = folder / f"card_high_{language}.json"
        path.write_text(json.dumps(list(by_id.values()), ensure_ascii=False), "utf-8")


def task_names(tasks: Sequence[str]) -> list[str]:
    """Complete language pairs become their group, so the group row is recomputed too."""
    names = set(tasks)
    for group, members in GROUPS.items():
        if set(members) <= names:
            names = (names - set(members)) | {group}
    return sorted(names)


def rescore(
    paths: Sequence[Path], judge: str, judge_backend: str, judge_args: str, output: Path | None
) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import make_table

    samples = read_samples(paths)
    transcripts = {
        (s["doc"]["language"], s["doc"]["card_id"]): s["resps"][0][0] for task in samples.values() for s in task
    }
    tracker = EvaluationTracker(output_path=str(output) if output else None)
    with tempfile.TemporaryDirectory(prefix="esc-rescore-") as data_dir:
        write_card_files(samples, Path(data_dir))
        metadata = {"data_dir": data_dir, "judge": judge, "judge_backend": judge_backend, "judge_args": judge_args}
        results = simple_evaluate(
            model=ReplayLM(transcripts),
            model_args="pretrained=rescored",
            tasks=task_names(list(samples)),
            metadata=metadata,
            log_samples=True,
            evaluation_tracker=tracker,
        )
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    logged = results.pop("samples")
    for config in results["configs"].values():
        config["metadata"].pop("data_dir", None)  # a temporary folder, gone now
        config["metadata"]["esc_eval"]["data_dir"] = None
        config["metadata"]["rescored_from"] = [str(p) for p in paths]
    if output is not None:
        tracker.save_results_aggregated(results=results, samples=logged)
        for task in results["configs"]:
            tracker.save_results_samples(task_name=task, samples=logged[task])
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    return results
