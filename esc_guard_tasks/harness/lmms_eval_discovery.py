"""Zero-flag discovery for lmms-eval: our task folder and our model, after a plain ``pip install``.

**Tasks.** lmms-eval 0.7.3 has no entry-point group for task folders, and ``LMMS_EVAL_PLUGINS`` does not
work for tasks (the CLI builds its ``TaskManager`` before it reads the variable). Every entry point —
``lmms-eval --tasks …``, ``python -m lmms_eval …``, ``lmms-eval tasks list`` and the Python API — builds
an ``lmms_eval.tasks.TaskManager``. :func:`patch_lmms_task_manager` wraps its ``__init__`` so that it also
scans ``task_dir("lmms_eval")`` (``esc_guard_tasks/task_yamls/lmms_eval``). It is run by the post-import
hook of :mod:`esc_guard_tasks.autoload` (armed by ``esc_guard_tasks.pth``) right after ``lmms_eval.tasks``
is imported, and by nobody else; ``ESC_GUARD_TASKS_AUTOLOAD=0`` switches it off together with the
lm-eval hook. The explicit alternative is
``--include_path "$(python -m esc_guard_tasks.harness.lmms_eval_discovery)"`` (this module prints the folder).

Precedence: lmms-eval merges task folders so that the **first** folder that defines a name wins
(``{**new, **old}``), built-ins first. Our folder therefore goes **last**: a user's ``--include_path``
can still override our tasks, and built-in lmms-eval tasks always win a name clash (none of our names
clashes today; the tests check it).

**Model.** :func:`model_manifests` is the payload of the ``lmms_eval.models`` entry point: lmms-eval calls
it when ``lmms_eval.models`` is imported and registers ``hf_image_text`` (chat class
:class:`esc_guard_tasks.harness.lmms_eval_model.HFImageTextModel`, imported only when that model is used).

This module imports only the standard library at import time: the ``.pth`` hook imports it at every
interpreter start.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from types import ModuleType

HARNESS = "lmms_eval"
MODEL_ID = "hf_image_text"
MODEL_CLASS_PATH = "esc_guard_tasks.harness.lmms_eval_model.HFImageTextModel"
_PATCHED = "_esc_guard_tasks_include"


def lmms_task_dir() -> Path:
    """Our lmms-eval task folder, wherever the package is installed."""
    from esc_guard_tasks.autoload import task_dir

    return task_dir(HARNESS)


def _same_path(a: object, b: Path) -> bool:
    try:
        return Path(os.fspath(a)).resolve() == b.resolve()
    except (TypeError, OSError):
        return False


def with_our_task_dir(include_path: object) -> list:
    """``include_path`` as a list with our folder appended last (earlier folders win in lmms-eval)."""
    if include_path is None:
        paths: list = []
    elif isinstance(include_path, (list, tuple)):
        paths = list(include_path)
    else:
        paths = [include_path]
    ours = lmms_task_dir()
    if any(_same_path(p, ours) for p in paths):
        return paths
    return [*paths, str(ours)]


def patch_lmms_task_manager(module: ModuleType) -> None:
    """Wrap ``module.TaskManager.__init__`` so that it always scans our lmms-eval task folder (idempotent)."""
    cls = getattr(module, "TaskManager", None)
    if cls is None or getattr(cls, _PATCHED, False):
        return
    original = cls.__init__
    signature = inspect.signature(original)
    if "include_path" not in signature.parameters:
        return  # an lmms-eval we do not know: leave it alone

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):  # noqa: N807 - replaces a dunder
        bound = signature.bind(self, *args, **kwargs)
        bound.arguments["include_path"] = with_our_task_dir(bound.arguments.get("include_path"))
        original(*bound.args, **bound.kwargs)

    cls.__init__ = __init__
    setattr(cls, _PATCHED, True)


def model_manifests() -> list:
    """The ``lmms_eval.models`` entry-point payload: ``hf_image_text`` as a chat model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, chat_class_path=MODEL_CLASS_PATH)]


if __name__ == "__main__":
    print(lmms_task_dir())
