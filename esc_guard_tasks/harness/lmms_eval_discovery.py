"""Zero-flag discovery for lmms-eval: our task folder and our model, after a plain ``pip install``.

**Tasks.** lmms-eval 0.7.3 has no entry-point group for task folders, and ``LMMS_EVAL_PLUGINS`` does not
work for tasks (the CLI builds its ``TaskManager`` before it reads the variable). Every entry point —
``lmms-eval --tasks …``, ``python -m lmms_eval …``, ``lmms-eval tasks list`` and the Python API — builds
an ``lmms_eval.tasks.TaskManager``; :func:`patch_lmms_task_manager` (defined beside the lm-eval one in
:mod:`esc_guard_tasks.task_folders`) makes it also scan ``task_dir("lmms_eval")``. The post-import hook of
:mod:`esc_guard_tasks.autoload` (armed by ``esc_guard_tasks.pth``) runs it right after
``lmms_eval.tasks`` is imported; ``ESC_GUARD_TASKS_AUTOLOAD=0`` switches it off together with the
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

from pathlib import Path

from esc_guard_tasks.task_folders import patch_lmms_task_manager, task_dir

__all__ = ["lmms_task_dir", "model_manifests", "patch_lmms_task_manager"]

HARNESS = "lmms_eval"
MODEL_ID = "hf_image_text"
MODEL_CLASS_PATH = "esc_guard_tasks.harness.lmms_eval_model.HFImageTextModel"


def lmms_task_dir() -> Path:
    """Our lmms-eval task folder, wherever the package is installed."""
    return task_dir(HARNESS)


def model_manifests() -> list:
    """The ``lmms_eval.models`` entry-point payload: ``hf_image_text`` as a chat model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, chat_class_path=MODEL_CLASS_PATH)]


if __name__ == "__main__":
    print(lmms_task_dir())
