"""Zero-flag discovery: the .pth hook is light, opt-out works, and user include paths keep precedence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

from esc_guard_tasks.autoload import OPT_OUT_ENV, patch_task_manager, task_dir


def _python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ | env, check=True, timeout=300
    )
    return result.stdout


def test_interpreter_start_imports_nothing_heavy():
    """The installed .pth arms the hook at every start without importing lm_eval, torch or transformers."""
    loaded = json.loads(_python("import json, sys; print(json.dumps(sorted(sys.modules)))"))
    assert "esc_guard_tasks.autoload" in loaded
    assert not {"lm_eval", "torch", "transformers", "datasets"} & set(loaded)


def test_task_manager_finds_our_tasks_in_a_new_process():
    """A fresh interpreter that imports lm-eval sees esc_eval with no flag and no environment variable."""
    code = "from lm_eval.tasks import TaskManager; print('esc_eval' in TaskManager().all_groups)"
    assert _python(code).strip() == "True"


def test_opt_out_disables_the_hook():
    """ESC_GUARD_TASKS_AUTOLOAD=0 leaves lm-eval untouched."""
    code = "from lm_eval.tasks import TaskManager; print('esc_eval' in TaskManager().all_tasks)"
    assert _python(code, **{OPT_OUT_ENV: "0"}).strip() == "False"


def test_core_works_without_lm_eval():
    """With lm-eval unimportable, interpreter start and the harness-agnostic core still work."""
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"
        "from esc_guard_tasks.esc_eval.engine import DialogueEngine\n"
        "from esc_guard_tasks.esc_eval.cards import load_cards\n"
        "print(len(load_cards('en', card_set='demo')))"
    )
    assert int(_python(code)) >= 3


def _fake_harness() -> types.ModuleType:
    module = types.ModuleType("fake_manager")

    class TaskManager:
        def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
            self.include_path = include_path

    module.TaskManager = TaskManager
    return module


def test_our_folder_comes_before_user_folders():
    """Later include paths override earlier ones in lm-eval, so ours goes first: --include_path still wins."""
    module = _fake_harness()
    patch_task_manager(module)
    patch_task_manager(module)  # idempotent
    assert module.TaskManager().include_path == [task_dir()]
    assert module.TaskManager(None, "/user/tasks").include_path == [task_dir(), "/user/tasks"]
    assert module.TaskManager(include_path=["/a", "/b"]).include_path == [task_dir(), "/a", "/b"]
    assert module.TaskManager(include_path=str(task_dir())).include_path == [str(task_dir())]


def test_task_dir_holds_the_yamls():
    assert {p.name for p in Path(task_dir(), "esc_eval").glob("*.yaml")} >= {
        "esc_eval.yaml",
        "esc_eval_en.yaml",
        "esc_eval_zh.yaml",
    }
