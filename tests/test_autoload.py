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
        "from esc_guard_tasks.esc_eval.dialogue import EscDialogueEngine\n"
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


def _fake_legacy_harness() -> types.ModuleType:
    """lm-eval <= 0.4.11's shape: TaskManager in ``lm_eval.tasks``, first folder wins, class tasks unmerged."""
    module = types.ModuleType("lm_eval.tasks")

    class TaskManager:
        def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
            self.include_path = include_path
            self.metadata = metadata

        def _config_is_python_task(self, config: dict) -> bool:
            return "class" in config

    TaskManager.__module__ = module.__name__
    module.TaskManager = TaskManager
    return module


def test_legacy_manager_scans_our_folder_last_and_merges_metadata_into_our_classes_only():
    """In lm-eval <= 0.4.11 the first folder wins, so ours goes last (a user's --include_path still wins), and
    ``--metadata`` reaches our task classes as it reaches YAML-only tasks; other classes are left as they were."""
    from esc_guard_tasks.autoload import patch_legacy_task_manager
    from esc_guard_tasks.harness.lm_eval_task import ESCEvalTask

    module = _fake_legacy_harness()
    patch_legacy_task_manager(module)
    patch_legacy_task_manager(module)  # idempotent
    manager = module.TaskManager(include_path="/user/tasks", metadata={"rounds": 3})
    assert manager.include_path == ["/user/tasks", str(task_dir())]

    ours = {"class": ESCEvalTask, "metadata": {"version": 0.1}}
    assert manager._config_is_python_task(ours)
    assert ours["metadata"] == {"version": 0.1, "rounds": 3}
    theirs = {"class": types.SimpleNamespace, "metadata": {"version": 1}}
    assert manager._config_is_python_task(theirs)
    assert theirs["metadata"] == {"version": 1}


def test_legacy_hook_leaves_a_reexported_manager_alone():
    """lm-eval >= 0.4.12 re-exports the manager from ``lm_eval.tasks.manager`` in ``lm_eval.tasks``: only the
    hook on the defining module patches it (ours first there), never the legacy one (ours last)."""
    from esc_guard_tasks.autoload import patch_legacy_task_manager

    module = _fake_harness()  # TaskManager defined elsewhere than the module it is found in
    module.__name__ = "lm_eval.tasks"
    patch_legacy_task_manager(module)
    assert module.TaskManager(include_path="/user/tasks").include_path == "/user/tasks"
