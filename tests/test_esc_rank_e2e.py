"""ESC-RANK from InternLM2-layout checkpoints, end to end: converted once (no remote code), then judged."""

from __future__ import annotations

import math

from harness_runs import run_cli, tiny_args
from internlm2_fixtures import TinySpec, build_adapter, build_internlm2
from judge_fixtures import ADAPTER_FOLDERS


def test_esc_eval_judged_by_an_internlm2_checkpoint(tiny_model, card_dir, tmp_path, monkeypatch):
    """judge_args naming an InternLM2 base + ESC-RANK-style adapters (fused wqkv LoRA) just work: the base and all
    14 adapters are converted into the cache on first use, re-used on the next run, and every dimension row appears."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ESC_GUARD_CACHE", str(cache))
    base = tmp_path / "internlm2-chat-7b"
    config, _ = build_internlm2(base, TinySpec(max_position_embeddings=8192, rope_scaling=None))
    for seed, folder in enumerate(ADAPTER_FOLDERS):
        build_adapter(tmp_path / "ESC-RANK" / folder, base, config, seed=seed)
    judge_args = f"pretrained={base},adapters={tmp_path / 'ESC-RANK'},device=cpu,max_new_tokens=2,dtype=float32"

    def run(out: str):
        args = tiny_args(tiny_model, data_dir=str(card_dir), limit=1, rounds=1, judge="esc_rank", judge_args=judge_args)
        return run_cli([*args, "--apply_chat_template", "--log_samples"], tmp_path / out)

    first = run("a")
    (converted,) = [p for p in (cache / "esc_rank").iterdir() if p.is_dir()]  # beside it: its .lock
    manifest_time = (converted / "manifest.json").stat().st_mtime
    assert {p.name for p in (converted / "adapters").iterdir()} == set(ADAPTER_FOLDERS)
    assert not list(converted.rglob("*.py")), "remote code must not survive the conversion"
    rows = first.results["results"]["esc_eval_en"]
    assert all(f"{m},none" in rows for m in ("fluency", "humanoid", "overall", "average", "invalid_rate"))
    assert all(math.isnan(rows[f"{m},none"]) or 0 <= rows[f"{m},none"] <= 100 for m in ("fluency", "average"))
    judge = first.results["configs"]["esc_eval_en"]["metadata"]["esc_eval"]["judge"]
    assert judge["judge"] == "esc_rank"

    run("b")
    assert (converted / "manifest.json").stat().st_mtime == manifest_time, "conversion must happen once"
