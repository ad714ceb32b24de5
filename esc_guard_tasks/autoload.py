"""Zero-flag task discovery: ``lm_eval --tasks esc_eval`` after a plain ``pip install``.

lm-eval 0.4.x scans only its own task folder plus ``--include_path``; it has no
entry-point group for task folders (upstream proposal: the ``lm_eval.tasks`` group,
which ``setup.cfg`` declares as well). ``esc_guard_tasks.pth`` imports this module at
interpreter start. It imports nothing heavy: it only registers a post-import hook
that, once lm-eval's task manager module has been imported by someone else, makes every
``TaskManager`` also scan our ``task_yamls/lm_eval`` folder, placed so that user
``--include_path`` folders can still override our tasks.

Two lm-eval layouts exist: from 0.4.12 ``lm_eval.tasks.manager`` (later folders win), up to
0.4.11 ``lm_eval.tasks`` itself (the first folder wins). The older manager also hands a task
class (``class:`` in a YAML) its config without the ``--metadata`` it merges into every other
task; for our own task classes the hook merges it the way 0.4.12 and later do, so settings
reach ESC-Eval in every 0.4.x release.

The same hook makes lmms-eval's ``TaskManager`` (``lmms_eval.tasks``) scan ``task_yamls/lmms_eval``
(there our folder goes last, because lmms-eval keeps the first folder that defines a name).

Opt out with ``ESC_GUARD_TASKS_AUTOLOAD=0``; ``--include_path "$(esc-guard task-dir)"``
is the explicit alternative.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from esc_guard_tasks.task_folders import (
    PATCHED,
    patch_legacy_include,
    patch_lmms_task_manager,
    patch_task_manager,
    task_dir,
)

OPT_OUT_ENV = "ESC_GUARD_TASKS_AUTOLOAD"

__all__ = ["OPT_OUT_ENV", "install", "patch_lmms_task_manager", "patch_task_manager", "task_dir"]


def _is_ours(task_class: object) -> bool:
    return getattr(task_class, "__module__", "").startswith("esc_guard_tasks.")


def patch_legacy_task_manager(module: ModuleType) -> None:
    """lm-eval <= 0.4.11 (``TaskManager`` defined in ``lm_eval.tasks``): scan our folder last, and give our
    task classes the ``--metadata`` that manager merges into YAML-only tasks but not into ``class:`` tasks.

    Its loader asks ``_config_is_python_task(config)`` right before it calls ``config["class"](config=config)``,
    so that is where the merge goes (the same ``config | metadata`` as its YAML-only branch).
    """
    cls = getattr(module, "TaskManager", None)
    if cls is None or cls.__module__ != module.__name__ or getattr(cls, PATCHED, False):
        return  # 0.4.12 and later re-export the manager from lm_eval.tasks.manager (patched there)
    is_python_task = getattr(cls, "_config_is_python_task", None)
    if is_python_task is not None:

        @functools.wraps(is_python_task)
        def _config_is_python_task(self, config: dict) -> bool:
            python_task = is_python_task(self, config)
            if python_task and _is_ours(config.get("class")) and getattr(self, "metadata", None):
                config["metadata"] = (config.get("metadata") or {}) | self.metadata
            return python_task

        cls._config_is_python_task = _config_is_python_task
    patch_legacy_include(module)


def patch_evaluator_config(module: ModuleType) -> None:
    """lm-eval >= 0.4.12's CLI: check ESC-Eval's settings and files when the task names are resolved.

    ``simple_evaluate`` loads the model under test before it builds any task; the CLI resolves the task
    names (``EvaluatorConfig.process_tasks``) before that, knowing ``--model_args`` and ``--metadata``.
    """
    cls: Any = getattr(module, "EvaluatorConfig", None)
    original = getattr(cls, "process_tasks", None)
    if original is None or getattr(cls, PATCHED, False):
        return

    @functools.wraps(original)
    def process_tasks(self, *args, **kwargs):
        manager = original(self, *args, **kwargs)
        from esc_guard_tasks.harness.lm_eval_preflight import preflight

        model_args = self.model_args if isinstance(self.model_args, dict) else {}
        preflight(self.tasks or [], self.metadata or {}, model_args, predict_only=bool(self.predict_only))
        return manager

    cls.process_tasks = process_tasks
    setattr(cls, PATCHED, True)


def patch_make_table(module: ModuleType) -> None:
    """Both harnesses' CLIs print ``make_table(results)`` then, if any, ``make_table(results, "groups")``:
    the last table printed gets one line per task saying the tokens each role used (and the cost)."""
    original = getattr(module, "make_table", None)
    if original is None or getattr(original, PATCHED, False):
        return

    @functools.wraps(original)
    def make_table(result_dict: dict, column: str = "results", *args: Any, **kwargs: Any) -> str:
        table = original(result_dict, column, *args, **kwargs)
        if column == "groups" or "groups" not in result_dict:
            from esc_guard_tasks.usage import usage_lines

            lines = usage_lines(result_dict)
            if lines:
                table = table.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
        return table

    setattr(make_table, PATCHED, True)
    module.make_table = make_table  # type: ignore[attr-defined]


class _HookedLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the hook on the freshly executed module."""

    def __init__(self, loader: importlib.abc.Loader, hook: Callable[[ModuleType], None]):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._hook(module)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _PostImportHooks(importlib.abc.MetaPathFinder):
    """Runs a callback right after a named module is imported (by anyone)."""

    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]]):
        self.hooks = hooks

    def find_spec(self, fullname, path, target=None):
        hook = self.hooks.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _HookedLoader(spec.loader, hook)
                return spec
        return None


HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "lm_eval.tasks.manager": patch_task_manager,
    "lm_eval.tasks": patch_legacy_task_manager,
    "lmms_eval.tasks": patch_lmms_task_manager,
    "lm_eval.config.evaluate_config": patch_evaluator_config,
    "lm_eval.utils": patch_make_table,
    "lmms_eval.utils": patch_make_table,
}


def install() -> None:
    """Register the hooks once; patch right away what is already imported."""
    if os.environ.get(OPT_OUT_ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return
    if any(isinstance(f, _PostImportHooks) for f in sys.meta_path):
        return
    for name, hook in HOOKS.items():
        if name in sys.modules:
            hook(sys.modules[name])
    sys.meta_path.insert(0, _PostImportHooks(HOOKS))


install()
