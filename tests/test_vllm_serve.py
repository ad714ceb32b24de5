"""ESC-RANK behind `vllm serve --lora-modules`, judged through the openai backend: a real server, real vLLM.

Run in the vLLM environment (``scripts/setup_vllm.sh``). The checkpoint is a tiny InternLM2-layout
model with ESC-RANK-style fused-``wqkv`` adapters, converted by ``convert_esc_rank`` exactly as a
user would before serving it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from internlm2_fixtures import TinySpec, build_adapter, build_internlm2
from judge_fixtures import ADAPTER_FOLDERS

from esc_guard_tasks.esc_eval.judging import score_dialogues
from esc_guard_tasks.esc_eval.rubric import SCORE_LABELS
from esc_guard_tasks.esc_rank.convert import convert_esc_rank
from esc_guard_tasks.judges.hf_lora import HFLoraJudge
from esc_guard_tasks.judges.openai_chat import OpenAIChatJudge

VLLM = Path(sys.executable).parent / "vllm"
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM.exists(), reason="vLLM is not installed: run scripts/setup_vllm.sh"),
]
# head size 32 (vLLM's CPU kernel needs >= 32), grouped-query like the real model, long context
SPEC = TinySpec(
    hidden_size=64, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192, rope_scaling=None
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("esc_rank_serve")
    config, _ = build_internlm2(root / "internlm2", SPEC)
    for seed, folder in enumerate(ADAPTER_FOLDERS):
        build_adapter(root / "ESC-RANK" / folder, root / "internlm2", config, seed=seed)
    return convert_esc_rank(root / "internlm2", root / "ESC-RANK", root / "converted", rope_scaling="drop")


@pytest.fixture(scope="module")
def server(converted: Path):
    """`vllm serve` on loopback with all 14 adapters as LoRA modules; stopped after the module."""
    port = _free_port()
    modules = [f"{name}={converted / 'adapters' / name}" for name in ADAPTER_FOLDERS]
    command = [
        str(VLLM),
        "serve",
        str(converted / "base"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(len(modules) + 1),
        "--max-lora-rank",
        "8",
        "--lora-modules",
        *modules,
        "--max-model-len",
        "8192",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-num-batched-tokens",
        "16384",
    ]
    env = os.environ | {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    log = (converted.parent / "serve.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited: {(converted.parent / 'serve.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{base_url}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("vllm serve did not become ready in 240 s") from None
                time.sleep(1)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_served_esc_rank_equals_the_in_process_judge(converted, server, transcripts):
    """Each request reaches its adapter by name ({adapter} → fluency_en …), the served chat template adds BOS
    once like the hf judge, and the greedy first token of every (dialogue, dimension) equals the hf judge's.

    A first token that is one byte of a multi-byte character decodes to U+FFFD in transformers while
    vLLM's detokenizer holds the incomplete bytes back (""): the comparison treats the two alike."""
    english = [t for t in transcripts if t.language == "en"][:2]
    served = OpenAIChatJudge(base_url=server, max_tokens=1, num_concurrent=4)
    local = HFLoraJudge(
        str(converted / "base"),
        {n: str(converted / "adapters" / n) for n in ADAPTER_FOLDERS},
        device="cpu",
        dtype="float32",
        max_new_tokens=1,
        labels=SCORE_LABELS,
    )
    over_http = score_dialogues(served, english, "esc_rank")
    in_process = score_dialogues(local, english, "esc_rank")

    def texts(dialogues):
        return [[v.raw.replace("\ufffd", "") for v in d] for d in dialogues]

    assert texts(over_http) == texts(in_process)
    assert len({v.raw for d in in_process for v in d}) > 1, "adapters must change the replies"
