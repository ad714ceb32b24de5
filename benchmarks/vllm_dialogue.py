"""The dialogue benchmark with both speakers on vLLM (lm-eval's ``vllm`` backend), next to hf, in the vLLM venv.

Run by ``benchmarks.run`` as ``.venv-vllm/bin/python -m benchmarks.vllm_dialogue``; writes one JSON file.
vLLM's CPU attention needs a head size of at least 32, so the tiny model here is 64 wide with 2 heads
(the hf tiny model of the main benchmark has 4 heads of 16). vLLM's automatic prefix caching re-uses the
KV cache of the shared prompt prefix between rounds (each round's prompt extends the previous one). The
sequential reference loop (hf, one dialogue and one turn at a time) runs on the same model for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default="8,32,128")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the hf runs")
    args = parser.parse_args()
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(args.threads)
    from lm_eval.models.vllm_causallms import VLLM

    from benchmarks import dialogue, fixtures
    from benchmarks.measure import measure

    model = fixtures.tiny_chat_model(args.root, hidden_size=64, num_heads=2)
    settings = dialogue.DialogueSettings(args.rounds, args.max_new_tokens, args.batch_size)
    (vllm_lm, _), start = measure(
        lambda: (
            VLLM(
                pretrained=str(model), max_model_len=4096, dtype="float32", enforce_eager=True,
                distributed_executor_backend="uni", max_num_batched_tokens=16384, max_num_seqs=128,
                enable_prefix_caching=True, seed=1234,
            ),
            None,
        )
    )  # fmt: skip
    hf_lm = dialogue.load_hflm(model, args.batch_size)
    dialogue.run_engine(vllm_lm, fixtures.cards(2), dialogue.DialogueSettings(1, 4, args.batch_size))
    dialogue.run_engine(hf_lm, fixtures.cards(2), dialogue.DialogueSettings(1, 4, args.batch_size))
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        cards = fixtures.cards(n)
        out_v, on_vllm = measure(lambda c=cards: dialogue.run_engine(vllm_lm, c, settings))
        out_h, on_hf = measure(lambda c=cards: dialogue.run_engine(hf_lm, c, settings))
        out_s, sequential = measure(lambda c=cards: dialogue.run_sequential(hf_lm, c, settings))
        rows.append(
            {
                "n": n,
                "vllm_engine": on_vllm.as_dict(),
                "hf_engine": on_hf.as_dict(),
                "sequential_hf": sequential.as_dict(),
                "vllm_speedup_over_hf": round(on_hf.seconds / on_vllm.seconds, 2),
                "vllm_speedup_over_sequential": round(sequential.seconds / on_vllm.seconds, 2),
                "same_turns_vllm_vs_hf": round(dialogue.same_turns(out_v, out_h), 4),
                "transcript_chars": {
                    "vllm": dialogue.transcript_chars(out_v),
                    "hf": dialogue.transcript_chars(out_h),
                    "sequential": dialogue.transcript_chars(out_s),
                },
            }
        )
    import vllm

    result = {"vllm": vllm.__version__, "engine_start_seconds": round(start.seconds, 1), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
