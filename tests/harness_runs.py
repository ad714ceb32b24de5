"""Helpers to run lm-eval exactly as its CLI does, in process, and read what it wrote."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    output: Path
    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def transcripts(self, task: str) -> list[dict[str, Any]]:
        return [json.loads(s["resps"][0][0]) for s in self.samples[task]]


def run_cli(args: list[str], output: Path) -> Run:
    """``lm_eval <args> --output_path output`` through lm-eval's own CLI entry point."""
    from lm_eval.__main__ import cli_evaluate

    argv = sys.argv
    sys.argv = ["lm_eval", *args, "--output_path", str(output)]
    try:
        cli_evaluate()
    finally:
        sys.argv = argv
    return read_run(output)


def read_run(output: Path) -> Run:
    (results_file,) = sorted(output.glob("**/results_*.json"))
    samples = {}
    for path in sorted(output.glob("**/samples_*.jsonl")):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return Run(output, json.loads(results_file.read_text("utf-8")), samples)


def tiny_args(
    model: Path, *, tasks: str = "esc_eval", rounds: int = 2, limit: int | None = 2, **metadata: Any
) -> list[str]:
    """A fast esc_eval invocation: the tiny model as supporter and as role-player."""
    meta = {
        "role_model": "hf",
        "role_model_args": f"pretrained={model}",
        "role_gen_kwargs": {"max_gen_toks": 6},
        "rounds": rounds,
        "judge": "none",
    } | metadata
    args = [
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model}",
        "--device",
        "cpu",
        "--tasks",
        tasks,
        "--batch_size",
        "4",
        "--gen_kwargs",
        "max_gen_toks=6",
        "--metadata",
        json.dumps(meta),
    ]
    return args + (["--limit", str(limit)] if limit is not None else [])


def one_round_run(model: Path, output: Path, *flags: str, **metadata: Any) -> Run:
    """A one-round ``tiny_args`` run with the chat template applied and the extra CLI ``flags`` (the shape of
    every judged run in the tests: one round is enough to judge, the chat template is how ESC-Eval runs)."""
    return run_cli([*tiny_args(model, rounds=1, **metadata), "--apply_chat_template", *flags], output)


def served_judge(server: Any, judge: str = "esc_rank", extra_args: str = "") -> dict[str, str]:
    """Metadata that judges with ``judge`` on the openai backend served by ``server`` (a LoopbackChatServer)."""
    return {"judge": judge, "judge_backend": "openai", "judge_args": f"base_url={server.base_url}{extra_args}"}
