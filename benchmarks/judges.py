"""Judge throughput: ESC-RANK (logits vs generate vs the reference's one-call-per-judgement loop) and GuardRank
(batched vs batch 1), on tiny checkpoints in the real formats (see ``benchmarks.fixtures``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.measure import measure
from esc_guard_tasks.esc_eval.judging import judge_request
from esc_guard_tasks.esc_eval.rubric import SCORE_LABELS, dimensions


def esc_rank(root: Path, dialogues: int, batch_size: int, max_new_tokens: int = 16) -> dict[str, Any]:
    """One judge object per mode (same converted base and 14 adapters); every mode scores the same requests."""
    from esc_guard_tasks.judges.hf_lora import HFLoraJudge

    base, adapters = fixtures.esc_rank_checkpoint(root)
    transcripts = fixtures.synthetic_transcripts(dialogues)
    requests = [judge_request(t, d, "esc_rank") for t in transcripts for d in dimensions()]

    def judge(mode: str, size: int, tokens: int = max_new_tokens) -> HFLoraJudge:
        return HFLoraJudge(
            base, adapters, dtype="float32", device="cpu", batch_size=size, score_mode=mode,
            max_new_tokens=tokens, labels=SCORE_LABELS,
        )  # fmt: skip

    generate, logits = judge("generate", batch_size), judge("logits", batch_size)
    short, reference = judge("generate", batch_size, 2), judge("generate", 1)
    prompt_tokens = sum(len(generate.render(r)) for r in requests)
    generate.complete(requests[:2])  # warm-up (first-call allocations), not timed
    results: dict[str, Any] = {"requests": len(requests), "prompt_tokens": prompt_tokens, "batch_size": batch_size}
    replies = {}
    # Interleaved: each mode runs once, reference last; ratios come from the same minutes of machine load.
    for name, backend, call in (
        ("logits", logits, lambda b: b.complete(requests)),
        ("generate", generate, lambda b: b.complete(requests)),
        ("generate_2_tokens", short, lambda b: b.complete(requests)),
        ("reference_loop", reference, lambda b: [b.complete([r])[0] for r in requests]),
    ):
        replies[name], m = measure(lambda b=backend, c=call: c(b))
        results[name] = m.as_dict() | {"judgements_per_s": round(len(requests) / m.seconds, 2)}
    digit_first = [i for i, reply in enumerate(replies["generate"]) if reply[:1] in SCORE_LABELS]
    results["first_token_digit_share"] = round(len(digit_first) / len(requests), 4)
    results["logits_equal_generate_where_digit_first"] = sum(
        replies["logits"][i] == replies["generate"][i][:1] for i in digit_first
    ) == len(digit_first)
    results["generate_equals_reference_loop"] = round(
        sum(a == b for a, b in zip(replies["generate"], replies["reference_loop"], strict=True)) / len(requests), 4
    )
    results["speedup_logits_vs_generate"] = round(results["generate"]["seconds"] / results["logits"]["seconds"], 2)
    results["speedup_logits_vs_reference"] = round(
        results["reference_loop"]["seconds"] / results["logits"]["seconds"], 2
    )
    results["speedup_generate_vs_reference"] = round(
        results["reference_loop"]["seconds"] / results["generate"]["seconds"], 2
    )
    return results


def _guardrank_texts(items: int, kind: str, minimal: bool = False) -> list[str]:
    """Judge inputs of plausible length, or (``minimal``) with one-word prompts and answers: the fixed per-call
    cost of a batch-1 pass."""
    from tiny_models import CORPUS

    from esc_guard_tasks.mllmguard.guardrank import DECODER_DIMENSIONS, decoder_input, encoder_input

    english = [s for s in CORPUS if s.isascii()]
    texts = []
    for i in range(items):
        if minimal:
            prompt, response = "Why?", "No."
        else:
            prompt = " ".join(english[(i + k) % len(english)] for k in range(2))
            response = " ".join(english[(3 * i + k) % len(english)] for k in range(1 + i % 6))
        if kind == "decoder":
            texts.append(decoder_input(DECODER_DIMENSIONS[i % 4], prompt, response))
        else:
            texts.append(encoder_input(prompt, response))
    return texts


def guardrank(root: Path, items: int, batch_size: int) -> dict[str, Any]:
    """Both classifiers at ``batch_size`` and at batch 1 (the reference encoder's setting) on the same texts.

    On a CPU a batch-1 pass over a few hundred tokens is already a matrix-matrix product, so batching can only
    save the fixed cost of each call (tokenising, dispatch, the layers' Python). ``batch_1_minimal`` measures
    that cost (batch 1 on one-word inputs); ``ceiling`` = batch-1 time / (batch-1 time − that cost) is the
    speed-up batching would reach if it removed the fixed cost and nothing else."""
    from esc_guard_tasks.mllmguard.guardrank import GuardRankDecoder, GuardRankEncoder

    paths = fixtures.guardrank_checkpoints(root)
    decoder = GuardRankDecoder(paths["decoder_base"], paths["decoder_adapter"], device="cpu", batch_size=batch_size)
    encoder = GuardRankEncoder(paths["encoder_base"], paths["encoder_weights"], device="cpu", batch_size=batch_size)
    results: dict[str, Any] = {"items": items, "batch_size": batch_size}
    for name, classifier in (("llama_decoder", decoder), ("roberta_encoder", encoder)):
        texts = _guardrank_texts(items, classifier.kind)
        classifier.scores(texts[:2])  # warm-up
        row: dict[str, Any] = {"tokens": sum(len(ids) for ids in classifier.encode(texts))}
        scores = {}
        for mode, size in (("batched", batch_size), ("batch_1", 1)):
            classifier.batch_size = size
            scores[mode], m = measure(lambda c=classifier, t=texts: c.scores(t))
            row[mode] = m.as_dict() | {"items_per_s": round(items / m.seconds, 2)}
        minimal = _guardrank_texts(items, classifier.kind, minimal=True)
        _, fixed = measure(lambda c=classifier, t=minimal: c.scores(t))  # still at batch 1
        row["batch_1_minimal"] = fixed.as_dict()
        row["speedup"] = round(row["batch_1"]["seconds"] / row["batched"]["seconds"], 2)
        compute = row["batch_1"]["seconds"] - fixed.seconds
        row["ceiling"] = round(row["batch_1"]["seconds"] / compute, 2) if compute > 0 else None
        row["same_labels"] = scores["batched"] == scores["batch_1"]
        results[name] = row
    return results
