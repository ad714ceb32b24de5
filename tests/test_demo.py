"""The README's first command: the ESC-Eval pipeline end to end with SmolLM2-135M-Instruct, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_with_smollm2(tmp_path):
    """`esc-guard demo` runs real lm_eval with SmolLM2 as supporter and role-player on the demo cards,
    prints the harness table, names the judge (none) and where the transcripts are."""
    esc_guard = Path(sys.executable).parent / "esc-guard"
    run = subprocess.run(
        [str(esc_guard), "demo", "--limit", "1", "--rounds", "1", "--max-tokens", "12", "--output", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},  # SmolLM2 uses both cores
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "|esc_eval_demo" in run.stdout and "empty_turn_rate" in run.stdout
    assert "Judge: none" in run.stdout and "DEMO DATA" in run.stdout
    listed = [line.strip() for line in run.stdout.splitlines() if line.strip().endswith(".jsonl")]
    assert len(listed) == 2
    for path in listed:
        (sample,) = [json.loads(line) for line in (tmp_path / path).read_text("utf-8").splitlines()]
        transcript = json.loads(sample["resps"][0][0])
        assert [t["speaker"] for t in transcript["turns"]] == ["seeker", "supporter"]
        assert all(t["text"] for t in transcript["turns"]), transcript
        assert sample["doc"]["source"] == "esc-guard-tasks demo"
    assert "SmolLM2-135M-Instruct" in run.stderr  # the exact lm_eval command is shown


@pytest.mark.slow
def test_demo_says_how_many_turns_came_from_the_store_and_logs_the_store(tmp_path):
    """With the dialogue store on, a second `esc-guard demo` says that all its turns came from the store, names the
    file and how to regenerate; the first says none did; the logged settings name the store file, not null."""
    esc_guard = Path(sys.executable).parent / "esc-guard"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ESC_EVAL_DIALOGUE_STORE")}
    store = Path(env["ESC_GUARD_CACHE"]) / "dialogues.sqlite"
    outputs = []
    for name in ("first", "second"):
        run = subprocess.run(
            [str(esc_guard), "demo", "--limit", "1", "--rounds", "1", "--max-tokens", "8", "--output", name],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=900,
            env=env,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        outputs.append(run.stdout)
    assert f"Dialogue store {store}: 0 of 4 turns were re-used" in outputs[0]
    assert f"Dialogue store {store}: 4 of 4 turns were re-used" in outputs[1]
    assert "delete that file or set ESC_EVAL_DIALOGUE_STORE=none" in outputs[1]
    (results,) = (tmp_path / "second").glob("**/results_*.json")
    configs = json.loads(results.read_text("utf-8"))["configs"]
    assert configs["esc_eval_demo_en"]["metadata"]["dialogue_store"] == str(store)
