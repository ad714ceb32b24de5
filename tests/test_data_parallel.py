"""esc_eval under lm-eval data parallelism: two ``accelerate launch`` CPU processes (gloo), each with its shard.

Every launch runs in a subprocess with a timeout, so a deadlock between the ranks fails the
test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness_runs import Run, read_run, run_cli, tiny_args
from judge_fixtures import build_tiny_judge

pytestmark = pytest.mark.slow

LAUNCHER = Path(__file__).with_name("cpu_data_parallel.py")
TIMEOUT = 150  # seconds; one launch takes ~25 s on two shared cores


@pytest.fixture(scope="module")
def judge_args(tmp_path_factory) -> str:
    base, adapters = build_tiny_judge(tmp_path_factory.mktemp("dp_judge"))
    return f"pretrained={base},adapters={adapters},device=cpu,max_new_tokens=1"


def esc_args(model: Path, esc_data: Path, judge_args: str, limit: int) -> list[str]:
    """Greedy supporter and role-player (sampled turns would depend on what shares a batch), judged by ESC-RANK."""
    meta = {"role_gen_kwargs": {"max_gen_toks": 6, "do_sample": False}, "judge": "esc_rank", "judge_args": judge_args}
    args = tiny_args(model, data_dir=str(esc_data), limit=limit, **meta)
    return [*args, "--apply_chat_template", "--log_samples"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], output: Path, cache: Path) -> subprocess.CompletedProcess:
    """``accelerate launch --num_processes 2`` on CPU; the whole process group is killed on timeout."""
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())),
        *(str(LAUNCHER), *args, "--output_path", str(output)),
    ]
    env = os.environ | {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "ESC_GUARD_CACHE": str(cache)}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"accelerate launch did not finish in {TIMEOUT} s (deadlock between ranks?)\n{out[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out)


def by_doc(run: Run, task: str) -> dict[int, tuple]:
    return {s["doc_id"]: (s["resps"], s["filtered_resps"]) for s in run.samples[task]}


def metric_values(run: Run) -> dict[str, float]:
    """Every reported number except bootstrap stderrs (resampled in gather order, so not order-free)."""
    return {
        f"{task}/{key}": value
        for task, row in run.results["results"].items()
        for key, value in row.items()
        if "_stderr" not in key and isinstance(value, (int, float))
    }


def test_two_ranks_with_uneven_shards_equal_one_process(tiny_model, esc_data, judge_args, tmp_path, monkeypatch):
    """--limit 3 over two ranks (2 + 1 dialogues per language, each rank judging its own shard concurrently into one
    judge cache) gives exactly the single-process transcripts, verdicts and metric values, and does not deadlock."""
    args = esc_args(tiny_model, esc_data, judge_args, limit=3)
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache_single"))
    single = run_cli(args, tmp_path / "single")

    done = launch(args, tmp_path / "dp", tmp_path / "cache_dp")
    assert done.returncode == 0, done.stdout[-4000:]
    for shard in (2, 1):  # both ranks judged, uneven shards
        assert f"Judging {shard} esc_eval_en dialogues" in done.stdout, done.stdout[-4000:]
    parallel = read_run(tmp_path / "dp")

    for task in ("esc_eval_en", "esc_eval_zh"):
        assert sorted(by_doc(parallel, task)) == [0, 1, 2]
        assert by_doc(parallel, task) == by_doc(single, task)
        verdicts = [json.loads(s["filtered_resps"][0])["verdicts"] for s in single.samples[task]]
        assert any(v["score"] is not None for dialogue in verdicts for v in dialogue), "judge gave no valid score"
    values = metric_values(single)
    assert {"esc_eval/fluency,none", "esc_eval_zh/average,none", "esc_eval_en/invalid_rate,none"} <= set(values)
    assert metric_values(parallel) == pytest.approx(values, rel=1e-12, nan_ok=True)


def test_a_rank_without_cards_fails_fast_naming_the_fix(tiny_model, esc_data, judge_args, tmp_path):
    """--limit 1 on two ranks leaves rank 1 without a card: the run fails within the timeout (no hang) with an error
    naming the task, the rank and what to change."""
    done = launch(esc_args(tiny_model, esc_data, judge_args, limit=1), tmp_path / "dp", tmp_path / "cache")
    assert done.returncode != 0
    assert "esc_eval_en: rank 1 of 2 processes has no role card" in done.stdout, done.stdout[-4000:]
