"""ESC-Eval's checks before lm-eval loads any model: settings, the dialogue store, the judge cache, the cards.

lm-eval 0.4.13's ``simple_evaluate`` loads the model under test (the supporter) before it builds the tasks,
so a task's ``__init__`` runs only after the supporter has loaded (minutes for a 7B model). The ``lm_eval``
CLI resolves the task names (``EvaluatorConfig.process_tasks``) before it calls ``simple_evaluate``, with
``--model_args`` and ``--metadata`` at hand: the autoload hook wraps that step and, when an ESC-Eval task
is asked for, runs ``preflight`` there. The task checks its settings again when it is built and its files
when it builds its requests (the Python API, or ``ESC_GUARD_TASKS_AUTOLOAD=0``): after the supporter has
loaded, but before the role-player or judge loads and before any request.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from esc_guard_tasks.dialogue.store import check_store
from esc_guard_tasks.esc_eval.cards import load_cards
from esc_guard_tasks.esc_eval.protocol import LANGUAGES, Language
from esc_guard_tasks.esc_eval.settings import ESCSettings, unknown_key_warnings
from esc_guard_tasks.judges.cache import check_cache

TASK_PREFIX = "esc_eval"
# Our task and group names: esc_eval[_demo][_en|_zh] (the YAMLs' card_set and language).
TASK_NAME = re.compile(r"esc_eval(?P<demo>_demo)?(?:_(?P<language>en|zh))?")
log = logging.getLogger("lm_eval.esc_guard_tasks")


def check_files(settings: ESCSettings, judging: bool = True) -> None:
    """The dialogue store and (when a judge will run) the judge cache open and are intact, or a named error."""
    check_store(settings.dialogue_store)
    if judging and settings.judge != "none":
        check_cache()


def preflight(
    tasks: Iterable[Any], metadata: Mapping[str, Any], model_args: Collection[str], *, predict_only: bool = False
) -> ESCSettings | None:
    """Check the ESC-Eval settings and files of a CLI run that asks for an ESC-Eval task; None otherwise.

    ``metadata`` is what lm-eval hands every task (``--model_args`` merged with ``--metadata``);
    ``model_args`` are the supporter's argument names, never warned about as near-miss settings keys."""
    if not any(isinstance(task, str) and task.startswith(TASK_PREFIX) for task in tasks):
        return None
    for warning in unknown_key_warnings(metadata, os.environ, ignore=model_args):
        log.warning(warning)
    settings = ESCSettings.from_sources(metadata, os.environ)
    check_files(settings, judging=not predict_only)
    check_cards(tasks, settings)
    return settings


def check_cards(tasks: Iterable[Any], settings: ESCSettings) -> None:
    """Read and validate the role cards of every ESC-Eval task asked for (the task reads them again when built,
    from the same files or the ``datasets`` download cache), so a bad card fails before the supporter loads."""
    wanted: set[tuple[Language, str]] = set()
    for task in tasks:
        found = TASK_NAME.fullmatch(task) if isinstance(task, str) else None
        if found:
            languages = [language for language in LANGUAGES if found["language"] in (None, language)]
            wanted |= {(language, "demo" if found["demo"] else "high") for language in languages}
    for language, card_set in sorted(wanted):
        load_cards(language, card_set, settings.data_dir)
