"""Where our task folders are, and the patch that makes a harness's ``TaskManager`` scan one.

Shared by the install-time hook (:mod:`esc_guard_tasks.autoload`), lmms-eval's model entry point
(:mod:`esc_guard_tasks.harness.lmms_eval_discovery`) and ``esc-guard task-dir``; kept apart from the hook so
that the harness bridges never import the module that imports them. Standard library only: the ``.pth``
hook imports this at every interpreter start.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

# Marks a class or function this package already patched (every hook is idempotent).
PATCHED = "_esc_guard_tasks_include"


def task_dir(harness: str = "lm_eval") -> Path:
    """The folder holding our task YAMLs for one harness, wherever the package is installed.

    Each harness gets its own folder: lm-eval and lmms-eval configs must not be indexed by
    the other harness.
    """
    spec = importlib.util.find_spec("esc_guard_tasks.task_yamls")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("esc_guard_tasks.task_yamls is not installed; reinstall esc-guard-tasks")
    return Path(next(iter(spec.submodule_search_locations))) / harness


def _same_path(a: object, b: Path) -> bool:
    try:
        return Path(os.fspath(cast(Any, a))).resolve() == b.resolve()
    except (TypeError, OSError):
        return False


def with_task_dir(include_path: object, ours: Path, first: bool) -> list:
    """``include_path`` as a list with ``ours`` added first or last (never twice)."""
    if include_path is None:
        paths: list = []
    elif isinstance(include_path, (list, tuple)):
        paths = list(include_path)
    else:
        paths = [include_path]
    if any(_same_path(p, ours) for p in paths):
        return paths
    return [ours, *paths] if first else [*paths, str(ours)]


def task_manager_patch(harness: str, first: bool) -> Callable[[ModuleType], None]:
    """A hook that wraps ``module.TaskManager.__init__`` so it always scans ``task_dir(harness)``.

    lm-eval lets later folders override earlier ones, so ours goes first there (a user's
    ``--include_path`` still wins); lmms-eval keeps the first folder defining a name, so ours
    goes last there. Idempotent; a TaskManager without ``include_path`` is left alone.
    """

    def patch(module: ModuleType) -> None:
        cls = getattr(module, "TaskManager", None)
        if cls is None or getattr(cls, PATCHED, False):
            return
        original = cls.__init__
        signature = inspect.signature(original)
        if "include_path" not in signature.parameters:
            return

        @functools.wraps(original)
        def __init__(self, *args, **kwargs):  # noqa: N807 - replaces a dunder
            bound = signature.bind(self, *args, **kwargs)
            ours = task_dir(harness)
            bound.arguments["include_path"] = with_task_dir(bound.arguments.get("include_path"), ours, first)
            original(*bound.args, **bound.kwargs)

        cls.__init__ = __init__
        setattr(cls, PATCHED, True)

    return patch


patch_task_manager = task_manager_patch("lm_eval", first=True)
patch_lmms_task_manager = task_manager_patch("lmms_eval", first=False)
# lm-eval <= 0.4.11 keeps the first folder that defines a name: there ours goes last.
patch_legacy_include = task_manager_patch("lm_eval", first=False)
