"""Scoring ESC-Eval dialogues: which judge, what it is asked, what its replies mean.

``judge`` picks the judge (``esc_rank``: the trained LoRA adapters on InternLM2;
``llm_rubric``: any chat model given the same rubric prompts; ``none``),
``judge_backend`` where it runs, ``judge_args`` its arguments (lm-eval model_args syntax).
The judge is built once per process by the one judge registry (:mod:`esc_guard_tasks.judges.registry`: the
builders below for ``llm_rubric``, ESC-RANK's in :mod:`esc_guard_tasks.esc_rank.judge`), wrapped in the
persistent cache, and asked for all dialogues × 7 dimensions in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from esc_guard_tasks.esc_eval.checks import HF_ARGS, VLLM_ARGS, judge_args_for
from esc_guard_tasks.esc_eval.protocol import Transcript, prompts
from esc_guard_tasks.esc_eval.rubric import (
    SCORE_LABELS,
    Dimension,
    dimensions,
    judge_query,
    parse_reference,
    parse_strict,
)
from esc_guard_tasks.esc_eval.settings import ESCSettings, parse_kv
from esc_guard_tasks.judges import registry
from esc_guard_tasks.judges.base import JudgeBackend, JudgeRequest, Verdict, verdicts_to_json

__all__ = [
    "Verdict",
    "build_backend",
    "get_judge",
    "judge_request",
    "score_dialogues",
    "verdict_for",
    "verdicts_to_json",
]

# The weights of a judge: the base model, its adapters by name (None: a plain chat model), extra identity.
Weights = tuple[str, dict[str, str] | None, dict[str, Any]]


def verdict_for(dimension: Dimension, reply: str) -> Verdict:
    """The strict score (None = invalid) and, for comparability, the reference parser's, of one reply."""
    return Verdict(dimension.metric, parse_strict(reply), reply, parse_reference(reply))


def judge_request(transcript: Transcript, dimension: Dimension, judge: str) -> JudgeRequest:
    """ESC-RANK: InternLM2's default system prompt + the query, read by the dimension's adapter.
    llm_rubric: the query alone, one model for every dimension."""
    query = judge_query(transcript, dimension)
    if judge == "esc_rank":
        system = {"role": "system", "content": prompts()["internlm2_meta_instruction"]}
        return JudgeRequest.chat([system, {"role": "user", "content": query}], dimension.adapter(transcript.language))
    return JudgeRequest.chat([{"role": "user", "content": query}])


def score_dialogues(backend: JudgeBackend, transcripts: Sequence[Transcript], judge: str) -> list[list[Verdict]]:
    """All dialogues × all dimensions in one call to the backend; verdicts per dialogue, in dimension order."""
    dims = dimensions()
    requests = [judge_request(t, d, judge) for t in transcripts for d in dims]
    replies = backend.complete(requests)
    return [[verdict_for(d, replies[i * len(dims) + j]) for j, d in enumerate(dims)] for i in range(len(transcripts))]


def judge_args(settings: ESCSettings) -> dict[str, Any]:
    """The judge's arguments, through the same check the settings ran before any model loaded (ESCSettings may
    also be built directly)."""
    if settings.judge == "none":
        raise ValueError("judge=none has no backend")
    return judge_args_for(settings.judge, settings.judge_backend, parse_kv(settings.judge_args))


def get_judge(settings: ESCSettings) -> JudgeBackend:
    """The configured judge, built once per process (thread-safe), behind the persistent cache."""
    return registry.get(settings.judge, settings.judge_backend, judge_args(settings), cached=True)


def build_backend(settings: ESCSettings) -> JudgeBackend:
    """A new, uncached backend for the settings (``esc-guard verify`` compares it with the reference)."""
    return registry.build(settings.judge, settings.judge_backend, judge_args(settings))


def local_backend(
    backend: str, judge: str, args: dict[str, Any], weights: Callable[[dict[str, Any]], Weights], dtype: str = ""
) -> JudgeBackend:
    """In process: ``hf`` (transformers + peft) or ``vllm`` (one engine, multi-LoRA), the base loaded once with
    every adapter attached. ``weights`` pops the weight locations from ``args``; ``dtype``: the judge's default."""
    if backend == "hf":
        from esc_guard_tasks.judges.hf_lora import HFLoraJudge as Judge
    else:
        from esc_guard_tasks.judges.vllm_lora import VLLMLoraJudge as Judge  # type: ignore[assignment]
    options = {k: args.pop(k) for k in (HF_ARGS if backend == "hf" else VLLM_ARGS) if k in args}
    if dtype:
        options.setdefault("dtype", dtype)
    base, adapters, identity = weights(args)
    return Judge(base, adapters, labels=SCORE_LABELS, identity={"judge": judge} | identity, **options)


def served_backend(judge: str, args: dict[str, Any]) -> JudgeBackend:
    """An OpenAI-compatible server; ``judge_args_for`` has set ``model`` (ESC-RANK: ``{adapter}`` by default)."""
    from esc_guard_tasks.judges.openai_chat import OpenAIChatJudge

    return OpenAIChatJudge(**args, identity={"judge": judge})


def chat_model(args: dict[str, Any]) -> Weights:
    """llm_rubric's weights: one chat model, no adapters."""
    return str(args.pop("pretrained")), None, {}


def rubric_hf_backend(args: dict[str, Any]) -> JudgeBackend:
    return local_backend("hf", "llm_rubric", args, chat_model)


def rubric_vllm_backend(args: dict[str, Any]) -> JudgeBackend:
    return local_backend("vllm", "llm_rubric", args, chat_model)


def rubric_openai_backend(args: dict[str, Any]) -> JudgeBackend:
    return served_backend("llm_rubric", args)
