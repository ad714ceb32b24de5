"""MLLMGuard as lmms-eval tasks: one task class per config, named by ``class:`` in the YAMLs of
``task_yamls/lmms_eval/mllmguard`` (leaf tasks ``mllmguard_<config>``; groups ``mllmguard_truthfulness`` and
``mllmguard``). Taxonomy, settings, data, judges, scoring and formulas live in :mod:`esc_guard_tasks.mllmguard`
and :mod:`esc_guard_tasks.mllmguard.formulas`; this module wires them into lmms-eval's task life cycle
(checked against lmms-eval 0.7.3's ``evaluator.evaluate``):

1. **Build** (``__init__``): settings from the task's own ``metadata``, else the environment, else the
   defaults, all checked and the judge built, not loaded (:class:`~esc_guard_tasks.mllmguard.settings.TaskSettings`).
   ``download`` lets lmms-eval load the one-row stub next to the YAMLs (lmms-eval always calls
   ``datasets.load_dataset``, inside a retry), then replaces it by the real docs outside that retry: a data
   error is raised once, as our message naming the file, row and line.
2. **Generate**: requests reach the model as ``mllmguard_generate``, a request type added to lmms-eval's model
   base class, which passes them to ``generate_until`` in the shape the model takes (chat models: messages;
   simple models: ``doc_to_visual``). lmms-eval picks the task class by model kind only for tasks without
   ``class:``, and the model is not known while requests are built.
3. **Judge** (``apply_filters``, which lmms-eval calls after ``lm.clean()`` freed the model under test): every
   answer of a judged config in one batch (:meth:`~esc_guard_tasks.mllmguard.scoring.TaskScorer.judge`).
4. **Score** (``process_results``, pure; lmms-eval runs it in threads): the doc's record with its verdict as
   the ``judge`` value, ``see 'judge'`` for its other rows.
5. **Aggregate**: lmms-eval aggregates a task's rows in the order of the first doc's values (``judge`` first),
   after gathering every rank's values; the ``judge`` row keeps all records and every other row is computed on
   its subset of them. The group rows compose the plain leaf values with
   :func:`esc_guard_tasks.mllmguard.taxonomy.compose` (the same function as the metrics module and the report).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, ClassVar

import datasets
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.api.task import ConfigurableMessagesTask
from loguru import logger as eval_logger

from esc_guard_tasks.mllmguard import data as mdata
from esc_guard_tasks.mllmguard.scoring import TaskScorer, compose_leaves, composite_value, where
from esc_guard_tasks.mllmguard.settings import TaskSettings
from esc_guard_tasks.mllmguard.taxonomy import (
    CONFIGS,
    DIMENSION,
    DIMENSIONS,
    SUBTASKS,
    TRUTHFULNESS_CONFIGS,
    metric_names,
    subtask_slug,
    task_name,
)
from esc_guard_tasks.usage import usage_line, usage_record

REQUEST_TYPE = "mllmguard_generate"
# The leaves of mllmguard.yaml in the order lmms-eval hands their values to the group (its `task` list, depth first).
OVERALL_PARTS = tuple(config for dimension in DIMENSIONS for config in CONFIGS if DIMENSION[config] == dimension)


def doc_to_visual(doc: Mapping[str, Any]) -> list[Any]:
    """The query's one image, RGB; an unreadable image is an error naming the file and row."""
    try:
        return [mdata.load_image(doc["image_path"])]
    except mdata.MLLMGuardDataError as err:
        raise mdata.MLLMGuardDataError(f"{where(doc)}: {err}") from None


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    """The raw prompt (the reference adds nothing); ``pre_prompt``/``post_prompt`` only if a YAML sets them."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['prompt']}{kwargs.get('post_prompt', '')}"


def _answer_for_scoring(task: Any, response: Any) -> str:
    """An answer as lmms-eval passes it to ``process_results``: reasoning blocks stripped when the run sets
    ``reasoning_tags`` (the CLI does by default), then surrounding whitespace (``ConfigurableTask``)."""
    text = "" if response is None else str(response)
    try:
        from lmms_eval.api.reasoning import parse_reasoning_tags_config, strip_reasoning_tags
    except ImportError:  # a release without reasoning tags
        return text.strip()
    cli = getattr(getattr(task, "args", None), "reasoning_tags", None)
    tags = parse_reasoning_tags_config(cli_value=cli, task_value=getattr(task.config, "reasoning_tags", None))
    return (strip_reasoning_tags(text, tags) if tags is not None else text).strip()


class MLLMGuardTask(ConfigurableMessagesTask):
    """One MLLMGuard config as an lmms-eval task (a subclass per config fixes ``mllmguard_config``)."""

    mllmguard_config: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any):
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        metadata = config.get("metadata")
        config["metadata"] = metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
        name = str(config.get("task") or task_name(self.mllmguard_config))
        settings = TaskSettings.resolve(name, self.mllmguard_config, metadata)
        self.scorer = TaskScorer.for_settings(settings, log=eval_logger)
        super().__init__(config=config, **kwargs)

    @property
    def settings(self) -> TaskSettings:
        return self.scorer.settings

    def _prepare_metric_and_aggregation(self) -> None:
        """The rows are the taxonomy's; the YAML's ``metric_list`` names them (with ``higher_is_better``)."""
        declared = [entry["metric"] for entry in self.config.metric_list or []]
        expected = metric_names(self.mllmguard_config)
        if declared != expected:
            raise ValueError(f"{self.config.task}: metric_list must name {expected} in this order, got {declared}")
        self._metric_fn_list = dict.fromkeys(expected)
        self._metric_fn_kwargs: dict[str, dict[str, Any]] = {metric: {} for metric in expected}
        self._aggregation_list = {metric: self._aggregator(metric) for metric in expected}
        self._higher_is_better = {entry["metric"]: entry.get("higher_is_better") for entry in self.config.metric_list}

    def _aggregator(self, metric: str) -> Any:
        def aggregate(items: list[Any]) -> Any:
            value = self.scorer.aggregate(metric, items)
            if metric == "judge":
                self.config.metadata["mllmguard"]["scores"] = self.scorer.report
            return value

        aggregate.__name__ = aggregate.__qualname__ = f"mllmguard_{metric}"
        return aggregate

    def download(self, dataset_kwargs: dict[str, Any] | None = None) -> None:
        super().download(dataset_kwargs)  # lmms-eval's (retried) load of the one-row stub
        split = self.config.test_split
        docs = self._load_docs()  # not retried: a data error is raised once, as is
        stub = self.dataset[split]  # type: ignore[has-type]  # set by lmms-eval's download
        self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(docs, split=stub.split)})
        self.dataset_no_image = self.dataset.copy()

    def _load_docs(self) -> list[dict[str, Any]]:
        settings = self.settings
        config = settings.config
        result = mdata.load_queries(
            config,
            settings.split,
            data_dir=settings.data_dir,
            token=settings.token,
            revision=settings.revision,
            on_bad_row=settings.on_bad_row,  # type: ignore[arg-type]
            image_check=settings.image_check,  # type: ignore[arg-type]
        )
        if not result.queries:
            raise mdata.MLLMGuardDataError(
                f"MLLMGuard {config}/{settings.split}: no usable rows in {result.config_dir} "
                f"({result.rows} read, {len(result.skipped)} skipped)"
            )
        for skipped in result.skipped:
            eval_logger.warning(
                f"MLLMGuard: skipped {skipped.source_file} row {skipped.row} (line {skipped.line}): {skipped.reason}"
            )
        unknown: dict[str, int] = {}
        for query in result.queries if config in SUBTASKS else ():
            if subtask_slug(config, query.subtask) is None:
                unknown[query.subtask] = unknown.get(query.subtask, 0) + 1
        if unknown:
            eval_logger.warning(
                f"MLLMGuard {settings.task}: Category II values without a per-subtask row (still counted in the "
                f"task): {unknown}"
            )
        self.scorer.skipped_rows = len(result.skipped)
        self.config.metadata["mllmguard"] = {
            "settings": settings.public(),
            "data": {
                "origin": result.origin,
                "revision": result.revision,
                "config_dir": result.config_dir,
                "rows": result.rows,
                "queries": len(result.queries),
                "columns": result.columns,
                "skipped": [asdict(s) for s in result.skipped],
                "subtasks_without_row": unknown,
            },
            "judge": self.scorer.identity,
        }
        return [query.to_doc() | {"task": settings.task} for query in result.queries]

    def dump_config(self) -> dict[str, Any]:
        """lmms-eval copies this when the task is built and writes the copy to the results JSON after scoring:
        ``metadata`` stays our dict, so the per-config report added when ``judge`` aggregates reaches the JSON."""
        dumped = super().dump_config()
        dumped["metadata"] = self.config.metadata
        return dumped

    def construct_requests(self, doc_id: int, ctx: str, **kwargs: Any) -> Instance:
        split = kwargs["metadata"]["split"]
        gen_kwargs = copy.deepcopy(self.config.generation_kwargs)
        arguments = (ctx, gen_kwargs, self.doc_to_visual, self.doc_to_messages, doc_id, self.config.task, split)
        return Instance(
            request_type=REQUEST_TYPE, arguments=arguments, idx=0, task_name=self.config.task, doc_id=doc_id, **kwargs
        )

    def _bypassed(self) -> bool:
        return "bypass" in self._metric_fn_list  # --predict_only: no judge, no rows

    def apply_filters(self) -> None:
        """After generation and ``lm.clean()``: judge every answer of this task in one batch."""
        super().apply_filters()
        if self._bypassed():
            return
        docs = self.eval_docs
        answers = [
            (docs[instance.doc_id], _answer_for_scoring(self, response))
            for instance in self._instances
            for response in instance.filtered_resps.values()
        ]
        self.scorer.judge(answers)
        if self.scorer.usage is not None:  # the judge's tokens (the answers' are lmms-eval's own token_counts)
            record = usage_record({"judge": self.scorer.usage}, self.settings.price_table)
            self.config.metadata["mllmguard"]["usage"] = record
            eval_logger.info(f"MLLMGuard {usage_line(self.config.task, record)}")

    def process_results(self, doc: Mapping[str, Any], results: list[Any], full_docs: Any = None) -> dict[str, Any]:
        """The doc's record (with its verdict) for ``judge`` and ``see 'judge'`` for its other rows."""
        answer = results[0] if results else ""
        if isinstance(answer, list):
            answer = answer[0] if answer else ""
        answer = "" if answer is None else str(answer).strip()
        return self.scorer.doc_values(doc, answer, with_verdict=not self._bypassed())


def _task_class(config: str) -> type[MLLMGuardTask]:
    name = "".join(part.title() for part in config.split("-")) + "Task"
    cls = type(name, (MLLMGuardTask,), {"mllmguard_config": config, "__module__": __name__, "__qualname__": name})
    cls.__doc__ = f"lmms-eval task {task_name(config)} (MLLMGuard config '{config}')."
    return cls


TASK_CLASSES: dict[str, type[MLLMGuardTask]] = {config: _task_class(config) for config in CONFIGS}
PrivacyTask = TASK_CLASSES["privacy"]
BiasTask = TASK_CLASSES["bias"]
ToxicityTask = TASK_CLASSES["toxicity"]
LegalityTask = TASK_CLASSES["legality"]
HallucinationTask = TASK_CLASSES["hallucination"]
NoiseInjectionTask = TASK_CLASSES["noise-injection"]
PositionSwappingTask = TASK_CLASSES["position-swapping"]


def mllmguard_generate(lm: Any, requests: list[Instance]) -> list[Any]:
    """Our requests in the shape ``lm.generate_until`` takes (lmms-eval passes a repeated request several
    times: each is reshaped once)."""
    for request in requests:
        if request.request_type == REQUEST_TYPE:
            ctx, gen_kwargs, to_visual, to_messages, doc_id, task, split = request.arguments
            if getattr(lm, "is_simple", True):
                request.arguments = (ctx, gen_kwargs, to_visual, doc_id, task, split)
            else:
                request.arguments = (ctx, to_messages, gen_kwargs, doc_id, task, split)
            request.request_type = "generate_until"
    return lm.generate_until(requests)


def install_request_type() -> None:
    """Give every lmms-eval model the ``mllmguard_generate`` method the evaluator dispatches to."""
    if getattr(lmms, REQUEST_TYPE, None) is not mllmguard_generate:
        setattr(lmms, REQUEST_TYPE, mllmguard_generate)


install_request_type()


def truthfulness_mean(metrics: list[Any], sizes: list[int] | None = None, weight_by_size: bool = False) -> float:
    """Group row of ``mllmguard_truthfulness``: the unweighted mean of hallucination, noise and position."""
    composite = compose_leaves(metrics, TRUTHFULNESS_CONFIGS, "mllmguard_truthfulness", eval_logger)
    return composite_value(composite, "truthfulness")


def overall_mean(metrics: list[Any], sizes: list[int] | None = None, weight_by_size: bool = False) -> float:
    """Group row of ``mllmguard``: the mean of the five dimensions (truthfulness = mean of its three configs),
    not of the seven leaves (that would weight truthfulness 3/7)."""
    return composite_value(compose_leaves(metrics, OVERALL_PARTS, "mllmguard", eval_logger), None)
