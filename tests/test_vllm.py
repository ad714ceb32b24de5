"""The vLLM paths on real vLLM (the CPU build from PyPI), with tiny models built in code.

Run in the vLLM environment (``scripts/setup_vllm.sh``):
``.venv-vllm/bin/pytest -m vllm tests/test_vllm.py``. Elsewhere (no importable vLLM)
every test that needs it is skipped. Engines are few: one multi-LoRA judge engine serves
both score modes; three lm-eval runs (one fixture) start a supporter and a role-player each.

Engines run in one process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, fast to start). There,
freeing any engine tears down vLLM's process-wide parallel state, and every engine created
before then fails afterwards ("pipeline model parallel group is not initialized"): so the
module's judge engine is used only before the lm-eval runs free theirs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
from harness_runs import run_cli
from judge_fixtures import ADAPTER_FOLDERS

from esc_guard_tasks.esc_eval.judging import build_backend, score_dialogues
from esc_guard_tasks.esc_eval.protocol import Transcript
from esc_guard_tasks.esc_eval.rubric import SCORE_LABELS
from esc_guard_tasks.esc_eval.settings import ESCSettings
from esc_guard_tasks.judges.base import JudgeRequest

# One-process engines start in ~3 s (vs ~30 s); the CPU KV cache is capped (default:
# most of the RAM, committed); nothing is fetched from a hub. Set before vLLM is imported,
# and only when it is installed, so the main environment's suite is left untouched.
VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def _vllm_missing() -> str:
    """Why vLLM cannot be used here ('' when it can)."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed: run scripts/setup_vllm.sh and use .venv-vllm/bin/pytest -m vllm"
    for key, value in VLLM_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import vllm  # noqa: F401
    except (ImportError, RuntimeError) as err:
        return f"import vllm failed: {type(err).__name__}: {err}"
    return ""


_MISSING = _vllm_missing()
pytestmark = pytest.mark.vllm
needs_vllm = pytest.mark.skipif(bool(_MISSING), reason=_MISSING or "vLLM available")

# vLLM's CPU attention needs a head size of at least 32: hidden 32 / 1 head is the cheapest.
# The judge's longest prompt (a Chinese transcript in byte-level tokens) is ~7.8k tokens.
VLLM_SHAPE = {"hidden_size": 32, "num_heads": 1}
JUDGE_CONTEXT = 8192
# Fast, deterministic single-process engines, float32 as hf loads the checkpoints; large
# scheduler steps (the default 4096-token chunks make the 84 long prompts 3x slower).
ENGINE = {
    "dtype": "float32",
    "enforce_eager": True,
    "distributed_executor_backend": "uni",
    "max_num_batched_tokens": 16384,
    "max_num_seqs": 128,
}
JUDGE_NEW_TOKENS = 8


def kv(args: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in args.items())


def test_bad_vllm_judge_args_fail_before_any_engine_starts():
    """Invariant (no vLLM needed): judge_backend=vllm rejects unknown judge_args naming the accepted
    ones, llm_rubric without a model, and a bad score_mode, before vLLM is imported or a model loaded."""
    from esc_guard_tasks.judges.vllm_lora import VLLMLoraJudge

    def build(judge: str, judge_args: str):
        return build_backend(ESCSettings(judge=judge, judge_backend="vllm", judge_args=judge_args))

    with pytest.raises(ValueError, match=r"unknown judge_args for the vllm backend: device .*max_model_len"):
        build("llm_rubric", "pretrained=/nonexistent,device=cpu")
    with pytest.raises(ValueError, match="judge=llm_rubric with judge_backend=vllm needs judge_args pretrained"):
        build("llm_rubric", "max_model_len=4096")
    with pytest.raises(ValueError, match="score_mode must be one of generate, logits"):
        VLLMLoraJudge("/nonexistent", score_mode="probabilities")
    with pytest.raises(ValueError, match="unknown vLLM engine arguments for the judge: swap_space"):
        VLLMLoraJudge("/nonexistent", swap_space=4)


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory) -> tuple[Path, Path]:
    """The 14-adapter tiny ESC-RANK of judge_fixtures, with a vLLM-compatible head size and context,
    and without the generation config's suppress_tokens (hf applies them, vLLM ignores them; the
    real ESC-RANK has none), so that both backends compute the same greedy continuation."""
    from judge_fixtures import build_tiny_judge

    base, adapters = build_tiny_judge(tmp_path_factory.mktemp("vllm_judge"), **VLLM_SHAPE, max_positions=JUDGE_CONTEXT)
    config_file = base / "generation_config.json"
    config = json.loads(config_file.read_text("utf-8"))
    config.pop("suppress_tokens", None)
    config_file.write_text(json.dumps(config, indent=2), "utf-8")
    return base, adapters


@pytest.fixture(scope="module")
def adapters(tiny_judge) -> dict[str, str]:
    return {name: str(tiny_judge[1] / name) for name in ADAPTER_FOLDERS}


@pytest.fixture(scope="module")
def vllm_judge(tiny_judge, adapters):
    """The one multi-LoRA judge engine of this module (generate mode, up to JUDGE_NEW_TOKENS tokens)."""
    from esc_guard_tasks.judges.vllm_lora import VLLMLoraJudge

    return VLLMLoraJudge(
        str(tiny_judge[0]),
        adapters,
        labels=SCORE_LABELS,
        max_new_tokens=JUDGE_NEW_TOKENS,
        max_model_len=JUDGE_CONTEXT,
        **ENGINE,
    )


@pytest.fixture(scope="module")
def generated(vllm_judge, transcripts):
    """The vLLM judge's verdicts on the 12 example dialogues × 7 dimensions (one engine call)."""
    return score_dialogues(vllm_judge, transcripts, "esc_rank")


@needs_vllm
def test_vllm_judge_replies_equal_the_hf_judge(tiny_judge, adapters, transcripts, vllm_judge, generated):
    """Invariant: the vLLM judge (all 14 adapters in one engine with max_loras = 15; the 84 requests
    of 12 dialogues × 7 dimensions submitted in one call, each with its own LoRARequest) gives
    exactly the hf judge's greedy replies (transformers + peft, adapter by adapter, batch 1), raw
    text of up to JUDGE_NEW_TOKENS tokens compared: measured agreement 84/84. Both read the same
    prompt token ids (BOS once); adapter-less requests batched with adapter ones read the base
    model; and the adapters matter (replies differ across adapters for the same input)."""
    from esc_guard_tasks.judges.hf_lora import HFLoraJudge

    hf = HFLoraJudge(
        str(tiny_judge[0]), adapters, device="cpu", batch_size=1, max_new_tokens=JUDGE_NEW_TOKENS, labels=SCORE_LABELS
    )
    request = JudgeRequest.chat([{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q"}], "fluency")
    assert vllm_judge.render(request) == hf.render(request)
    assert vllm_judge.render(request).count(hf.tokenizer.bos_token_id) == 1

    expected = score_dialogues(hf, transcripts, "esc_rank")
    pairs = [(v.raw, h.raw) for dv, dh in zip(generated, expected, strict=True) for v, h in zip(dv, dh, strict=True)]
    agree = sum(v == h for v, h in pairs)
    assert len(pairs) == 84
    assert agree == 84, f"vLLM vs hf agreement {agree}/84: {[p for p in pairs if p[0] != p[1]][:5]}"
    assert len({tuple(v.raw for v in dialogue) for dialogue in generated}) > 1

    same = [JudgeRequest.chat([{"role": "user", "content": "same text"}], name) for name in ADAPTER_FOLDERS]
    mixed = [*same, JudgeRequest.chat(same[0].messages)]  # + the base model, in the same batch
    replies = vllm_judge.complete(mixed)
    assert replies == hf.complete(mixed)
    assert len(set(replies)) > 1, "all adapters answered alike: LoRA weights not applied"


@needs_vllm
def test_logits_mode_equals_generation_when_the_first_token_is_a_label(vllm_judge, transcripts, generated):
    """Invariant: score_mode=logits (max_tokens=1, sampling restricted to the label tokens '0'..'4')
    always replies with a label, and with the generated one wherever the greedy reply starts with a
    label token (then that token is the argmax over all tokens, hence over the labels)."""
    logits_judge = vllm_judge.with_options(score_mode="logits")
    assert logits_judge.llm is vllm_judge.llm and logits_judge.identity()["score_mode"] == "logits"
    from_logits = score_dialogues(logits_judge, transcripts, "esc_rank")
    tokenizer = vllm_judge.tokenizer
    label_ids = {tokenizer.convert_tokens_to_ids(label) for label in SCORE_LABELS}
    compared = 0
    for gen_dialogue, log_dialogue in zip(generated, from_logits, strict=True):
        for gen, log in zip(gen_dialogue, log_dialogue, strict=True):
            assert log.raw in SCORE_LABELS and log.score == int(log.raw)
            first = tokenizer(gen.raw, add_special_tokens=False)["input_ids"][:1]
            if first and first[0] in label_ids:
                assert log.raw == gen.raw[0]
                compared += 1
    assert compared >= 0.9 * 12 * 7


@pytest.fixture(scope="module")
def tiny_vllm_model(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("vllm_tiny") / "model", **VLLM_SHAPE)


@pytest.fixture(scope="module")
def lm_eval_runs(tiny_vllm_model, tiny_judge, card_dir, tmp_path_factory):
    """`lm_eval --model vllm` runs of esc_eval (--limit 1: one card per language, 2 rounds), the
    role-player on vLLM too: seed 7 judged by judge_backend=vllm, seed 7 again and seed 8 unjudged."""
    model_args = kv({"pretrained": tiny_vllm_model, "max_model_len": 4096} | ENGINE)
    judge_args = kv(
        {"pretrained": tiny_judge[0], "adapters": tiny_judge[1], "max_new_tokens": 1, "max_model_len": JUDGE_CONTEXT}
        | ENGINE
    )
    out = tmp_path_factory.mktemp("lm_eval_vllm")

    def run(name: str, seed: int, **metadata):
        meta = {
            "data_dir": str(card_dir),
            "role_model": "vllm",
            "role_model_args": model_args,
            "role_gen_kwargs": {"max_gen_toks": 6},
            "rounds": 2,
            "seed": seed,
        } | metadata
        args = ["--model", "vllm", "--model_args", model_args, "--tasks", "esc_eval", "--limit", "1"]
        args += ["--gen_kwargs", "max_gen_toks=6", "--apply_chat_template", "--log_samples"]
        return run_cli([*args, "--metadata", json.dumps(meta)], out / name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ESC_GUARD_CACHE", str(out / "cache"))
        return {
            "judged": run("judged", 7, judge="esc_rank", judge_backend="vllm", judge_args=judge_args),
            "again": run("again", 7, judge="none"),
            "other": run("other", 8, judge="none"),
        }


def seeker_turns(run) -> list[list[str]]:
    return [
        [t["text"] for t in transcript["turns"] if t["speaker"] == "seeker"]
        for task in ("esc_eval_en", "esc_eval_zh")
        for transcript in run.transcripts(task)
    ]


@needs_vllm
def test_lm_eval_vllm_runs_esc_eval_with_reproducible_role_player(lm_eval_runs):
    """Invariant: `lm_eval --model vllm` with role_model=vllm runs esc_eval end to end (one card per
    language, 2 rounds, seeker/supporter alternating); the role-player samples (temperature 0.7)
    with a per-request seed, so the same seed gives the same dialogues, and another seed other ones."""
    judged, again, other = lm_eval_runs["judged"], lm_eval_runs["again"], lm_eval_runs["other"]
    for task in ("esc_eval_en", "esc_eval_zh"):
        (transcript,) = judged.transcripts(task)
        assert [t["speaker"] for t in transcript["turns"]] == ["seeker", "supporter"] * 2
    meta = judged.results["configs"]["esc_eval_en"]["metadata"]["esc_eval"]
    assert meta["role_player"]["backend"] == "vllm" and meta["rounds"] == 2 and meta["seed"] == 7
    assert judged.results["config"]["model"] == "vllm"
    for task in ("esc_eval_en", "esc_eval_zh"):
        assert judged.transcripts(task) == again.transcripts(task)
    assert seeker_turns(judged) != seeker_turns(other)


@needs_vllm
def test_vllm_judge_through_lm_eval_gives_the_dimension_rows(lm_eval_runs, tiny_judge, adapters):
    """Invariant: judge=esc_rank with judge_backend=vllm inside lm-eval writes the 7 dimension rows
    + average (0–100) and the invalid rate per task, and its raw verdicts equal the hf judge's
    (same base and adapters, max_new_tokens=1) on the same transcripts.

    (Compared with hf, not with this module's vLLM engine: in one-process mode, freeing any
    engine, as lm-eval's runs do, tears down vLLM's process-wide parallel state, and engines
    created before then fail with 'pipeline model parallel group is not initialized'.)"""
    from esc_guard_tasks.judges.hf_lora import HFLoraJudge

    run = lm_eval_runs["judged"]
    rows = run.results["results"]
    for task in ("esc_eval", "esc_eval_en", "esc_eval_zh"):
        for metric in ("fluency", "expression", "empathy", "information", "skillful", "humanoid", "overall", "average"):
            value = rows[task][f"{metric},none"]
            assert math.isnan(value) or 0 <= value <= 100
        assert 0 <= rows[task]["invalid_rate,none"] <= 1
    judge_meta = run.results["configs"]["esc_eval_en"]["metadata"]["esc_eval"]["judge"]
    assert judge_meta["judge"] == "esc_rank" and judge_meta["backend"] == "vllm"
    hf = HFLoraJudge(str(tiny_judge[0]), adapters, device="cpu", batch_size=1, max_new_tokens=1, labels=SCORE_LABELS)
    for task in ("esc_eval_en", "esc_eval_zh"):
        records = [json.loads(s["filtered_resps"][0]) for s in run.samples[task]]
        dialogues = [Transcript.from_dict(r["transcript"]) for r in records]
        direct = score_dialogues(hf, dialogues, "esc_rank")
        assert [[v["raw"] for v in r["verdicts"]] for r in records] == [[v.raw for v in d] for d in direct]
