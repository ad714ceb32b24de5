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
from internlm2_fixtures import TinySpec, build_adapter, build_internlm2
from judge_fixtures import ADAPTER_FOLDERS, build_tiny_judge
from test_vllm import ENGINE, VLLM_ENV, VLLM_SHAPE, kv, needs_vllm
from tiny_models import build_tiny_chat_model

pytestmark = pytest.mark.slow

LAUNCHER = Path(__file__).with_name("cpu_data_parallel.py")
TIMEOUT = 300  # seconds; one launch takes 25-60 s on two shared cores; a deadlock never ends


@pytest.fixture(scope="module")
def judge_args(tmp_path_factory) -> str:
    base, adapters = build_tiny_judge(tmp_path_factory.mktemp("dp_judge"))
    return f"pretrained={base},adapters={adapters},device=cpu,max_new_tokens=1"


def esc_args(model: Path, card_dir: Path, judge_args: str, limit: int) -> list[str]:
    """Greedy supporter and role-player (sampled turns would depend on what shares a batch), judged by ESC-RANK."""
    meta = {"role_gen_kwargs": {"max_gen_toks": 6, "do_sample": False}, "judge": "esc_rank", "judge_args": judge_args}
    args = tiny_args(model, data_dir=str(card_dir), limit=limit, **meta)
    return [*args, "--apply_chat_template", "--log_samples"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], output: Path, env: dict[str, str], processes: int = 2) -> subprocess.CompletedProcess:
    """``accelerate launch --num_processes N`` on CPU (N = 1: plain python); the process group is killed on timeout."""
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        command += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    command += [str(LAUNCHER), *args, "--output_path", str(output)]
    env = os.environ | {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"} | env
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"lm_eval on {processes} processes did not finish in {TIMEOUT} s (deadlock?)\n{out[-4000:]}")
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


def test_two_ranks_with_uneven_shards_equal_one_process(tiny_model, card_dir, judge_args, tmp_path, monkeypatch):
    """--limit 3 over two ranks (2 + 1 dialogues per language, each rank judging its own shard concurrently into one
    judge cache) gives exactly the single-process transcripts, verdicts, metric values and token usage, and does not
    deadlock."""
    args = esc_args(tiny_model, card_dir, judge_args, limit=3)
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache_single"))
    single = run_cli(args, tmp_path / "single")

    done = launch(args, tmp_path / "dp", {"ESC_GUARD_CACHE": str(tmp_path / "cache_dp")})
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

    # each rank played and judged its own shard; the usage rank 0 writes is the sum over the ranks. A verdict one
    # process re-uses (a repeated dialogue) may be sent by both ranks, so the judge's sent + reused is what matches.
    for task in ("esc_eval_en", "esc_eval_zh"):
        usage = single.results["configs"][task]["metadata"]["esc_eval"]["usage"]
        summed = parallel.results["configs"][task]["metadata"]["esc_eval"]["usage"]
        assert usage["supporter"]["requests"] == 3 * 2
        assert usage["judge"]["requests"] + usage["judge"]["reused"] == 3 * 7
        assert {role: summed[role] for role in ("role_player", "supporter")} == {
            role: usage[role] for role in ("role_player", "supporter")
        }
        assert summed["judge"]["requests"] + summed["judge"]["reused"] == 3 * 7
        assert summed["judge"]["requests"] >= usage["judge"]["requests"]


def test_a_rank_without_cards_fails_fast_naming_the_fix(tiny_model, card_dir, judge_args, tmp_path):
    """--limit 1 on two ranks leaves rank 1 without a card: the run fails within the timeout (no hang) with an error
    naming the task, the rank and what to change."""
    args = esc_args(tiny_model, card_dir, judge_args, limit=1)
    done = launch(args, tmp_path / "dp", {"ESC_GUARD_CACHE": str(tmp_path / "cache")})
    assert done.returncode != 0
    assert "esc_eval_en: rank 1 of 2 processes has no role card" in done.stdout, done.stdout[-4000:]


# A rank resolving ESC-RANK, with the conversion counted (one line per start) and slowed down so that ranks overlap.
RESOLVE_AS_A_RANK = """
import sys, time
import esc_guard_tasks.esc_rank.convert as convert
from esc_guard_tasks.esc_rank.checkpoints import resolve_esc_rank

real = convert.convert_esc_rank
def counted(*args, **kwargs):
    with open(sys.argv[3], "a") as log:
        log.write("converted\\n")
    time.sleep(3)
    return real(*args, **kwargs)
convert.convert_esc_rank = counted
print(resolve_esc_rank(sys.argv[1], sys.argv[2])[0])
"""


def test_ranks_resolving_an_internlm2_judge_at_once_convert_it_once(tmp_path):
    """Two processes resolving the same InternLM2 ESC-RANK at the same time (as data-parallel ranks do) convert it
    once: the other waits and uses that conversion, instead of loading the base a second time."""
    base = tmp_path / "internlm2-chat-7b"
    config, _ = build_internlm2(base, TinySpec(max_position_embeddings=8192, rope_scaling=None))
    for seed, folder in enumerate(ADAPTER_FOLDERS):
        build_adapter(tmp_path / "ESC-RANK" / folder, base, config, seed=seed)
    log = tmp_path / "conversions.log"
    env = os.environ | {"ESC_GUARD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", RESOLVE_AS_A_RANK, str(base), str(tmp_path / "ESC-RANK"), str(log)]
    ranks = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [rank.communicate(timeout=TIMEOUT)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0]
    assert outputs[0] == outputs[1] and Path(outputs[0].strip(), "config.json").is_file()
    assert log.read_text().count("converted") == 1


@pytest.mark.vllm
@needs_vllm
def test_sampling_vllm_role_player_on_two_ranks_equals_one_process(tiny_model, card_dir, tmp_path):
    """Each rank builds its own vLLM role-player engine inside its accelerate process; the role-player samples
    (default role_gen_kwargs) with a per-dialogue seed on each request, so 2 ranks with uneven shards give exactly
    the dialogues of 1 process."""
    role_model = build_tiny_chat_model(tmp_path / "vllm_model", **VLLM_SHAPE)
    role = kv({"pretrained": role_model, "max_model_len": 4096} | ENGINE)
    args = tiny_args(tiny_model, data_dir=str(card_dir), limit=3, role_model="vllm", role_model_args=role)
    runs = {}
    for processes in (1, 2):
        env = VLLM_ENV | {"ESC_GUARD_CACHE": str(tmp_path / f"cache{processes}")}
        done = launch([*args, "--apply_chat_template", "--log_samples"], tmp_path / str(processes), env, processes)
        assert done.returncode == 0, done.stdout[-4000:]
        assert done.stdout.count("Loading the role-player: vllm") == processes, done.stdout[-4000:]
        runs[processes] = read_run(tmp_path / str(processes))
    for task in ("esc_eval_en", "esc_eval_zh"):
        assert sorted(by_doc(runs[2], task)) == [0, 1, 2]
        assert by_doc(runs[2], task) == by_doc(runs[1], task)
