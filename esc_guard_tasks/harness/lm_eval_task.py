"""ESC-Eval as an lm-eval task: one card → one multi-turn dialogue → (judged) transcript.

lm-eval calls a model once per request type with all requests of that type
(``getattr(lm, request.request_type)(requests)``). The task therefore emits one
``esc_dialogue`` request per card, and ``esc_dialogue`` — attached to lm-eval's ``LM``
base class — runs all of them through the round-synchronous ``DialogueEngine``: the
user's model is the supporter, the role-player comes from lm-eval's model registry.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.task import ConfigurableTask
from tqdm import tqdm

from esc_guard_tasks.dialogue.store import open_store
from esc_guard_tasks.esc_eval.cards import card_from_doc, trial_of_doc
from esc_guard_tasks.esc_eval.dialogue import DialogueSetup, EscDialogueEngine
from esc_guard_tasks.esc_eval.judging import get_judge, score_dialogues, verdicts_to_json
from esc_guard_tasks.esc_eval.protocol import (
    Speaker,
    Transcript,
    default_supporter_system_prompt,
    role_player_system_prompt,
)
from esc_guard_tasks.esc_eval.settings import ESCSettings, parse_kv, public_args
from esc_guard_tasks.harness.lm_eval_chat import LMEvalChatModel, RolePlayerChat, release_role_players
from esc_guard_tasks.harness.lm_eval_context import report_truncation
from esc_guard_tasks.harness.lm_eval_preflight import check_files
from esc_guard_tasks.metrics.esc_eval import OverCards, card_clusters, mean_of_dimensions
from esc_guard_tasks.usage import RoleUsage, usage_line, usage_of, usage_record

REQUEST_TYPE = "esc_dialogue"
# Each request's token usage per speaker, left on its Instance by esc_dialogue for the task to sum.
DIALOGUE_USAGE = "esc_eval_usage"
SPEAKER_ROLES: dict[str, Speaker] = {"role_player": "seeker", "supporter": "supporter"}
log = logging.getLogger("lm_eval.esc_guard_tasks")
# Written into the results of every llm_rubric run and logged once (numbers: the paper's Table 4, EN/ZH).
LLM_RUBRIC_NOTE = (
    "judge=llm_rubric: a general chat model given ESC-RANK's rubric prompts, not the trained ESC-RANK; its scores"
    " are not comparable with ESC-RANK's (in the paper's judge comparison, Table 4, GPT-4 with these prompts agrees"
    " exactly with human labels on 32.15/35.98% of verdicts (EN/ZH), ESC-RANK on 70.53/71.27%)"
)
_NOTED: set[str] = set()


class ESCEvalTask(ConfigurableTask):
    """A ConfigurableTask whose requests are whole dialogues instead of single generations."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any):
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        super().__init__(config=config, **kwargs)
        self.settings = ESCSettings.from_sources(self.config.metadata or {}, os.environ)
        # Resolved settings and identities land in the results JSON (configs → metadata).
        self.config.metadata["esc_eval"] = self.settings.describe()
        if self.settings.judge == "llm_rubric":
            self.config.metadata["esc_eval"]["judge"]["note"] = LLM_RUBRIC_NOTE

    def doc_to_text(self, doc: dict[str, Any], doc_to_text: Any = None) -> str:
        card = card_from_doc(doc)
        return role_player_system_prompt(card.base, card.language)

    def doc_to_target(self, doc: dict[str, Any], doc_to_target: Any = None) -> str:
        return ""  # no reference answer: a judge scores the transcript

    def fewshot_context(self, doc: dict[str, Any], num_fewshot: int, *args: Any, **kwargs: Any) -> str:
        # The context is assembled turn by turn during the dialogue, not here. (lm-eval <= 0.4.11 passes the
        # template options positionally, later releases by name.)
        return self.doc_to_text(doc)

    def build_all_requests(
        self, *, system_instruction: str | None = None, apply_chat_template: bool = False, **kwargs: Any
    ) -> None:
        # Before any request (the lm_eval CLI checked them before the supporter loaded; the Python API did not).
        check_files(self.settings, judging="bypass" not in self._metric_fn_list)
        try:
            super().build_all_requests(
                system_instruction=system_instruction, apply_chat_template=apply_chat_template, **kwargs
            )
        except ValueError:
            world_size = kwargs.get("world_size") or 1
            if world_size > 1 and not self._instances:  # lm-eval's "did not find any docs!", said for this run
                raise ValueError(
                    f"{self.config.task}: rank {kwargs.get('rank')} of {world_size} processes has no role card"
                    f" (--limit {kwargs.get('limit')}); lm-eval deals the cards round-robin and every process needs"
                    f" at least one: use --limit >= {world_size} or fewer processes"
                ) from None
            raise
        self._check_cached_docs()
        # Re-stamp every request with the current settings: lm-eval's --cache_requests key
        # ignores --metadata and --gen_kwargs, so cached instances may carry stale ones.
        supporter = {
            "system_prompt": default_supporter_system_prompt() if system_instruction is None else system_instruction,
            "gen_kwargs": dict(self.config.generation_kwargs or {}),
            "chat_template": bool(apply_chat_template),
            "model_args": self._supporter_model_args(),
        }
        for instance in self._instances:
            instance.request_type = REQUEST_TYPE
            instance.arguments = (self.doc_to_text(instance.doc), self._dialogue_spec(supporter))

    def _check_cached_docs(self) -> None:
        """Requests from lm-eval's --cache_requests must hold docs of this run: its key ignores --metadata, so a
        run with another ``trials`` (or other cards) would otherwise play the cached docs instead of its own.
        (Not caught: a cache of fewer trials than this run's, both above 1; its docs are a subset of this run's.)"""
        docs = {json.dumps(doc, sort_keys=True, default=str) for doc in self.eval_docs}
        for instance in self._instances:
            if json.dumps(instance.doc, sort_keys=True, default=str) not in docs:
                raise ValueError(
                    f"{self.config.task}: the requests lm-eval's --cache_requests gave are not this run's docs"
                    f" (doc {instance.doc_id}: built with another trials setting or other cards, which its cache key"
                    " ignores); rerun with --cache_requests refresh"
                )

    def _dialogue_spec(self, supporter: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        return {
            "rounds": s.rounds,
            "seed": s.seed,
            "role_model": s.role_model,
            "role_model_args": s.role_model_args,
            "role_gen_kwargs": s.role_gen_kwargs,
            "dialogue_store": s.dialogue_store,
            "supporter": supporter,
        }

    def _supporter_model_args(self) -> dict[str, Any]:
        """``--model_args`` as lm-eval merged them into the task metadata (minus this task's own keys and
        secrets): part of the dialogue store key, so another supporter never re-uses stored turns."""
        own = {*ESCSettings.__dataclass_fields__, "esc_eval", "config_source"}  # config_source: the YAML's path
        return public_args({k: v for k, v in (self.config.metadata or {}).items() if k not in own})

    def apply_filters(self) -> None:
        """After the dialogues: judge all of this task's transcripts in one batched pass, and record the tokens
        each role used (``configs.<task>.metadata.esc_eval.usage``).

        Judging is skipped for ``judge=none`` and ``--predict_only`` (its 'bypass' metric), so no
        judge is ever loaded then. Each filtered response becomes
        ``{"transcript": …, "verdicts": […]}`` (JSON), which ``--log_samples`` keeps.
        """
        super().apply_filters()
        usage = {role: self._dialogue_usage(speaker) for role, speaker in SPEAKER_ROLES.items()}
        if self.settings.judge != "none" and "bypass" not in self._metric_fn_list:
            judge = get_judge(self.settings)
            before = usage_of(judge)
            self._judge(judge)
            usage["judge"] = usage_of(judge) - before
        # tokens per role, printed after the results table too (see esc_guard_tasks.usage)
        record = usage_record(summed_over_ranks(usage), self.settings.prices)
        self.config.metadata["esc_eval"]["usage"] = record
        log.info("ESC-Eval %s", usage_line(self.config.task, record))

    def _dialogue_usage(self, speaker: Speaker) -> RoleUsage:
        """One speaker's usage over this task's dialogues; a dialogue played elsewhere (lm-eval's ``--use_cache``
        answered it) counts all its turns of that speaker as re-used."""
        total = RoleUsage()
        for instance in self._instances:
            played = getattr(instance, DIALOGUE_USAGE, None)
            total += played[speaker] if played is not None else RoleUsage(reused=self.settings.rounds)
        return total

    def _judge(self, judge: Any) -> None:
        """All of this task's transcripts in one batched pass per filter."""
        if self.settings.judge == "llm_rubric" and "llm_rubric" not in _NOTED:
            _NOTED.add("llm_rubric")
            log.warning("ESC-Eval %s", LLM_RUBRIC_NOTE)
        # what actually judged (resolved weights, dtype, score mode), beside the settings it was built from
        self.config.metadata["esc_eval"]["judge"]["identity"] = judge.identity()
        for key in self._instances[0].filtered_resps:
            records = [json.loads(instance.filtered_resps[key]) for instance in self._instances]
            transcripts = [Transcript.from_dict(r) for r in records]
            log.info(
                "Judging %d %s dialogues × 7 dimensions with %s",
                len(transcripts),
                self.config.task,
                self.settings.judge,
            )
            verdicts = score_dialogues(judge, transcripts, self.settings.judge)
            for instance, record, judged in zip(self._instances, records, verdicts, strict=True):
                instance.filtered_resps[key] = json.dumps(
                    {"transcript": record, "verdicts": verdicts_to_json(judged)}, ensure_ascii=False
                )

    def construct_requests(self, doc: dict[str, Any], ctx: str, **kwargs: Any) -> Instance:
        return Instance(request_type=REQUEST_TYPE, doc=doc, arguments=(ctx, {}), idx=0, metadata=kwargs["metadata"])


def summed_over_ranks(usage: dict[str, RoleUsage]) -> dict[str, RoleUsage]:
    """Under data parallelism each rank plays and judges its own shard; rank 0 writes the results, so the
    usage there must be every rank's. Every rank runs ``apply_filters`` for every task in the same order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return usage
    shards: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, {role: u.to_dict() for role, u in usage.items()})
    return {role: sum((RoleUsage.from_dict(s[role]) for s in shards), RoleUsage()) for role in usage}


def esc_dialogue(lm: Any, requests: Sequence[Instance]) -> list[str]:
    """Run every requested dialogue; returns each transcript as JSON, in request order.

    Requests sharing the same settings (normally all of them, both languages) go through
    one engine run: ``2 × rounds`` batched ``generate_until`` calls in total.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(index)
    if any(not requests[i[0]].args[1]["supporter"]["chat_template"] for i in groups.values()):
        _require_text_backend(lm)
    results: list[str] = [""] * len(requests)
    try:
        for indices in groups.values():
            transcripts = _run_dialogues(lm, [requests[i] for i in indices])
            for i, transcript in zip(indices, transcripts, strict=True):
                results[i] = transcript.to_json()
                # read back by the task (the same Instance objects): the dialogue JSON stays the dialogue
                setattr(requests[i], DIALOGUE_USAGE, {s: transcript.usage(s) for s in SPEAKER_ROLES.values()})
    finally:
        release_role_players()
    return results


def _require_text_backend(lm: Any) -> None:
    """Chat-completions backends take message lists only: fail before any model is loaded or called."""
    from lm_eval.models.openai_completions import LocalChatCompletion

    if isinstance(lm, LocalChatCompletion):
        raise ValueError(
            f"esc_eval: the supporter backend ({type(lm).__name__}) takes chat message lists; add --apply_chat_template"
        )


def _run_dialogues(lm: Any, requests: Sequence[Instance]) -> list[Transcript]:
    """One engine run over requests that share their settings, resumed from the dialogue store."""
    spec = requests[0].args[1]
    settings = ESCSettings(
        role_model=spec["role_model"],
        role_model_args=spec["role_model_args"],
        role_gen_kwargs=spec["role_gen_kwargs"],
        rounds=spec["rounds"],
        seed=spec["seed"],
    )
    supporter = spec["supporter"]
    cards = [card_from_doc(r.doc) for r in requests]
    identity = {
        "role_player": {
            "backend": settings.role_model,
            "model_args": public_args(parse_kv(settings.role_model_args)),
            "gen_kwargs": settings.role_gen_kwargs,
        },
        "supporter": {
            "backend": f"{type(lm).__module__}.{type(lm).__qualname__}",
            "model_args": supporter["model_args"],
            "gen_kwargs": supporter["gen_kwargs"],
            "chat_template": supporter["chat_template"],
        },
    }
    store = open_store(spec["dialogue_store"])
    engine = EscDialogueEngine(
        role_player=RolePlayerChat(settings, lm),
        supporter=LMEvalChatModel(lm, supporter["gen_kwargs"], use_chat_template=supporter["chat_template"]),
        rounds=settings.rounds,
        seed=settings.seed,
        store=store,
        identity=identity,
    )
    setups = [
        DialogueSetup(card, supporter["system_prompt"], trial_of_doc(r.doc))
        for card, r in zip(cards, requests, strict=True)
    ]
    try:
        with tqdm(total=2 * settings.rounds, desc=f"ESC-Eval dialogues ({len(cards)} in parallel)", unit="turn") as bar:

            def on_turn(round_index: int, speaker: str) -> None:
                bar.set_postfix(round=f"{round_index + 1}/{settings.rounds}", last=speaker)
                bar.update(1)

            transcripts = engine.run(setups, on_turn)
    finally:
        if store is not None:
            store.close()
    report_truncation(transcripts, {"seeker": settings.role_model, "supporter": identity["supporter"]["backend"]})
    return transcripts


def install_request_type() -> None:
    """Give every lm-eval LM the ``esc_dialogue`` method the evaluator dispatches to."""
    if getattr(LM, REQUEST_TYPE, None) is not esc_dialogue:
        setattr(LM, REQUEST_TYPE, esc_dialogue)


def install_average_stderr() -> None:
    """Give ``average`` (the mean of the seven dimension rows) a bootstrap stderr, and resample cards in
    multi-trial runs.

    lm-eval bootstraps the stderr only of its own aggregations (``nanmean``, ``median`` …) and prints
    "N/A" for a task's own; this gives ``mean_of_dimensions`` the same lm-eval ``bootstrap_stderr``
    (``--bootstrap_iters`` draws) the dimension rows get. When the items carry their card (``trials`` > 1),
    the same bootstrap of ``nanmean`` and ``mean_of_dimensions`` draws cards with all their trials instead of
    single dialogues: the trials of a card share the card and the supporter, so they are not independent
    draws. Every other metric keeps lm-eval's choice.
    """
    import lm_eval.evaluator_utils as evaluator_utils
    from lm_eval.api.metrics import bootstrap_stderr, nanmean

    original = evaluator_utils.stderr_for_metric
    if getattr(original, "esc_eval_average", False):
        return

    def stderr_for_metric(metric: Any, bootstrap_iters: int) -> Any:
        if metric not in (mean_of_dimensions, nanmean) or bootstrap_iters <= 0:
            return original(metric, bootstrap_iters)

        def stderr(items: Sequence[Any]) -> float:
            clusters = card_clusters(items)
            if clusters is None:
                return bootstrap_stderr(metric, items, iters=bootstrap_iters)
            return bootstrap_stderr(OverCards(metric), clusters, iters=bootstrap_iters)

        return stderr

    stderr_for_metric.esc_eval_average = True  # type: ignore[attr-defined]
    evaluator_utils.stderr_for_metric = stderr_for_metric


install_request_type()
install_average_stderr()
