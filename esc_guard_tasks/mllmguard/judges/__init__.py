"""Judging MLLMGuard answers: which judge, what it is asked, what its replies mean.

One entry point, :func:`judge_answers` (scores) / :func:`judge_verdicts` (scores + raw replies), for the
judged dimensions: ``privacy``, ``bias``, ``toxicity``, ``legality`` (0–3) and ``hallucination`` (0/1).
``noise-injection`` and ``position-swapping`` are scored by rules in the metrics, never by a judge.

Which judge: ``judge`` and ``judge_args`` from a task-level settings mapping, else the environment variables
``MLLMGUARD_JUDGE`` / ``MLLMGUARD_JUDGE_ARGS``, else ``guardrank`` with default arguments. ``judge_args`` is
``k=v,k=v`` (lm-eval ``model_args`` syntax, typed by lm-eval's parser as ESC-Eval's are) or a mapping.

* ``guardrank`` (default): the trained GuardRank classifiers (:mod:`esc_guard_tasks.mllmguard.guardrank`):
  decoder for the four open dimensions, encoder for hallucination. Arguments: ``decoder_base``,
  ``decoder_base_revision``, ``guardrank``, ``guardrank_revision``, ``decoder_model``, ``encoder_base``,
  ``encoder_base_revision``, ``encoder_model``, ``dtype`` (float32 as upstream; bfloat16 halves memory),
  ``device``, ``batch_size``. Each classifier is loaded on first use only.
* ``llm``: any OpenAI-compatible chat model (:class:`~esc_guard_tasks.judges.openai_chat.OpenAIChatJudge`)
  given this module's rubric (:data:`RUBRIC_VERSION`); needs ``base_url`` and ``model``; the API key only
  from the environment. Replies are parsed strictly: a reply that is not one allowed digit stays ``None``
  (invalid, counted in :attr:`MLLMGuardJudge.invalid`), never 0.
* ``keywords``: an offline **refusal-keyword baseline, not GuardRank**: an EN/ZH refusal phrase → 0,
  otherwise 3 (it never gives 1 or 2); hallucination: an "absent from the image" phrase → 0, otherwise 1.

Every judge except ``keywords`` sits behind the persistent SQLite cache (:mod:`esc_guard_tasks.judges.cache`);
``cache=false`` in ``judge_args`` turns it off. Each kind lives in its own module of this package
(:mod:`.guardrank`, :mod:`.llm`, :mod:`.keywords`) and is built by the one judge registry
(:mod:`esc_guard_tasks.judges.registry`): once per process and settings, behind a lock.

Records are mappings with ``prompt`` (as sent, incl. the second hallucination query's option suffix),
``response`` (the raw answer; ``None`` counts as ``""``) and ``config`` (the HF config name, upstream's
results-file prefix), else ``dimension``; the ``dimension=`` argument overrides both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from esc_guard_tasks.judges import registry
from esc_guard_tasks.judges.args import parse_pairs
from esc_guard_tasks.judges.base import Verdict
from esc_guard_tasks.mllmguard.judges.base import JUDGED_DIMENSIONS, MLLMGuardJudge, allowed_scores
from esc_guard_tasks.mllmguard.judges.guardrank import GuardRankJudge, parse_label
from esc_guard_tasks.mllmguard.judges.keywords import KeywordJudge
from esc_guard_tasks.mllmguard.judges.llm import RUBRIC_VERSION, LLMJudge, llm_messages, parse_llm_reply

__all__ = [
    "JUDGED_DIMENSIONS",
    "RUBRIC_VERSION",
    "GuardRankJudge",
    "JudgeSettings",
    "KeywordJudge",
    "LLMJudge",
    "MLLMGuardJudge",
    "Verdict",
    "allowed_scores",
    "clear_judges",
    "get_judge",
    "judge_answers",
    "judge_identity",
    "judge_verdicts",
    "llm_messages",
    "parse_label",
    "parse_llm_reply",
]

ENV_JUDGE = "MLLMGUARD_JUDGE"
ENV_JUDGE_ARGS = "MLLMGUARD_JUDGE_ARGS"
JUDGES = ("guardrank", "llm", "keywords")
DEFAULT_JUDGE = "guardrank"


@dataclass(frozen=True)
class JudgeSettings:
    judge: str = DEFAULT_JUDGE
    judge_args: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_sources(
        cls, settings: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> JudgeSettings:
        """Each key from the task-level ``settings`` if set (``judge`` not empty, ``judge_args`` not None), else
        from the environment, else the default (guardrank, no arguments)."""
        settings = settings or {}
        environ = os.environ if environ is None else environ
        judge = settings.get("judge") or environ.get(ENV_JUDGE) or DEFAULT_JUDGE
        args = settings.get("judge_args")
        if args is None:
            args = environ.get(ENV_JUDGE_ARGS, "")
        judge = str(judge).strip().lower()
        if judge not in JUDGES:
            raise ValueError(f"MLLMGuard judge must be one of {', '.join(JUDGES)}, got {judge!r}")
        return cls(judge, tuple(sorted(parse_pairs(args, "MLLMGuard judge_args").items())))

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.judge_args)


def get_judge(
    settings: Mapping[str, Any] | JudgeSettings | None = None, environ: Mapping[str, str] | None = None
) -> MLLMGuardJudge:
    """The configured judge, built once per process per settings (thread-safe) by the judge registry."""
    if not isinstance(settings, JudgeSettings):
        settings = JudgeSettings.from_sources(settings, environ)
    (backend,) = registry.backends(settings.judge)
    return registry.get(settings.judge, backend, settings.args)


def clear_judges() -> None:
    """Forget the built judges (tests, or a long-lived process that changes its settings)."""
    registry.clear()


def judge_verdicts(
    records: Sequence[Mapping[str, Any]],
    dimension: str | None = None,
    settings: Mapping[str, Any] | JudgeSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Verdict]:
    """Verdicts (score, raw reply) for every record, in order, from the configured judge."""
    return get_judge(settings, environ).verdicts(records, dimension)


def judge_answers(
    records: Sequence[Mapping[str, Any]],
    dimension: str | None = None,
    settings: Mapping[str, Any] | JudgeSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[int | None]:
    """Scores for every record, in order: 0–3 (hallucination 0/1); None = the judge's reply was invalid."""
    return [v.score for v in judge_verdicts(records, dimension, settings, environ)]


def judge_identity(
    settings: Mapping[str, Any] | JudgeSettings | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """What scores the answers, for the results JSON (never loads a model)."""
    return get_judge(settings, environ).identity()
