"""Scoring ESC-Eval dialogues: which judge, what it is asked, what its replies mean.

``judge`` picks the judge (``esc_rank``: the trained LoRA adapters on InternLM2;
``llm_rubric``: any chat model given the same rubric prompts; ``none``),
``judge_backend`` where it runs, ``judge_args`` its arguments (lm-eval model_args syntax).
The judge is built once per process, wrapped in the persistent cache, and asked for all
dialogues × 7 dimensions in one batched call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
from esc_guard_tasks.judges.base import JudgeBackend, JudgeRequest

ESC_RANK_BASE = "internlm/internlm2-chat-7b"
ESC_RANK_ADAPTERS = "haidequanbu/ESC-RANK"
# The reference scorer (score.py) loads InternLM2 + ESC-RANK in float16; judge_args dtype=… overrides it.
ESC_RANK_DTYPE = "float16"


@dataclass(frozen=True)
class Verdict:
    """One dimension of one dialogue: the strict score (None = invalid), the reference parser's, the raw reply."""

    dimension: str
    score: int | None
    reference_score: int
    raw: str

    @classmethod
    def from_reply(cls, dimension: Dimension, reply: str) -> Verdict:
        return cls(dimension.metric, parse_strict(reply), parse_reference(reply), reply)


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
    return [
        [Verdict.from_reply(d, replies[i * len(dims) + j]) for j, d in enumerate(dims)] for i in range(len(transcripts))
    ]


def verdicts_to_json(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    return [asdict(v) for v in verdicts]


_JUDGES: dict[str, JudgeBackend] = {}
_LOCK = threading.Lock()


def get_judge(settings: ESCSettings) -> JudgeBackend:
    """The configured judge, built once per process (thread-safe), behind the persistent cache."""
    key = repr((settings.judge, settings.judge_backend, settings.judge_args))
    with _LOCK:
        if key not in _JUDGES:
            from esc_guard_tasks.judges.cache import CachedJudge

            _JUDGES[key] = CachedJudge(build_backend(settings))
        return _JUDGES[key]


def build_backend(settings: ESCSettings) -> JudgeBackend:
    if settings.judge == "none":
        raise ValueError("judge=none has no backend")
    # the same check the settings ran before any model loaded (ESCSettings may also be built directly)
    args = judge_args_for(settings.judge, settings.judge_backend, parse_kv(settings.judge_args))
    builders = {"hf": _hf_backend, "openai": _openai_backend, "vllm": _vllm_backend}
    return builders[settings.judge_backend](settings.judge, args)


def _openai_backend(judge: str, args: dict[str, Any]) -> JudgeBackend:
    """An OpenAI-compatible server. ESC-RANK: one served model per adapter (``model`` default ``{adapter}``, as
    ``vllm serve --lora-modules fluency_en=…`` names them); llm_rubric: one named model."""
    from esc_guard_tasks.judges.openai_chat import ADAPTER_FIELD, OpenAIChatJudge

    if judge == "esc_rank":
        args.setdefault("model", ADAPTER_FIELD)
    return OpenAIChatJudge(**args, identity={"judge": judge})


def _local_weights(judge: str, args: dict[str, Any]) -> tuple[str, dict[str, str] | None, dict]:
    """Pop the weight locations from ``args``: ESC-RANK's base + adapters (converted if needed), or one chat model."""
    if judge == "esc_rank":
        from esc_guard_tasks.esc_rank.checkpoints import resolve_esc_rank

        return resolve_esc_rank(
            args.pop("pretrained", ESC_RANK_BASE),
            args.pop("adapters", ESC_RANK_ADAPTERS),
            revision=args.pop("revision", None),
            adapters_revision=args.pop("adapters_revision", None),
        )
    return str(args.pop("pretrained")), None, {}


def _hf_backend(judge: str, args: dict[str, Any]) -> JudgeBackend:
    """transformers + peft in process: the base once, every adapter attached."""
    from esc_guard_tasks.judges.hf_lora import HFLoraJudge

    options = {k: args.pop(k) for k in HF_ARGS if k in args}
    if judge == "esc_rank":
        options.setdefault("dtype", ESC_RANK_DTYPE)
    base, adapters, identity = _local_weights(judge, args)
    return HFLoraJudge(base, adapters, labels=SCORE_LABELS, identity={"judge": judge} | identity, **options)


def _vllm_backend(judge: str, args: dict[str, Any]) -> JudgeBackend:
    """vLLM in process: ESC-RANK's base with all 14 adapters in one engine (multi-LoRA); llm_rubric: one model."""
    from esc_guard_tasks.judges.vllm_lora import VLLMLoraJudge

    options = {k: args.pop(k) for k in VLLM_ARGS if k in args}
    if judge == "esc_rank":
        options.setdefault("dtype", ESC_RANK_DTYPE)
    base, adapters, identity = _local_weights(judge, args)
    return VLLMLoraJudge(base, adapters, labels=SCORE_LABELS, identity={"judge": judge} | identity, **options)
