"""The harness releases setup.cfg declares: discovery and a real run work at the lowest one as at the newest.

Marked ``oldest``: scripts/test.sh runs these in ``.venv-oldest`` (the lowest declared lm-eval, built by
scripts/setup_oldest.sh) besides the full suite in ``.venv`` (the newest), so a declaration that the code
does not honour fails CI. Everything goes through the real ``lm_eval`` command in a fresh process, as a
user's shell would run it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness_runs import tiny_args

from esc_guard_tasks.autoload import task_dir

pytestmark = pytest.mark.oldest

REPO = Path(__file__).resolve().parents[1]
LM_EVAL = str(Path(sys.executable).parent / "lm_eval")


def declared_lowest(distribution: str) -> str:
    """The lower bound setup.cfg's install_requires / extras give ``distribution``."""
    text = (REPO / "setup.cfg").read_text("utf-8")
    match = re.search(rf"^\s+{re.escape(distribution)}(?:\[[\w,]+\])?>=([\d.]+)", text, re.MULTILINE)
    assert match, f"setup.cfg declares no lower bound for {distribution}"
    return match.group(1)


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=os.environ | env, timeout=600)


@pytest.mark.parametrize("distribution", ["lm-eval", "lmms-eval"])
def test_this_environment_holds_the_declared_lowest_release(distribution: str):
    """The oldest-release venvs really hold the release setup.cfg names as the lowest, so CI exercises it
    (scripts/test.sh names the harness each of them is for in ESC_GUARD_EXPECT_OLDEST)."""
    if distribution not in os.environ.get("ESC_GUARD_EXPECT_OLDEST", "").split(","):
        pytest.skip(f"not the oldest-{distribution} environment (ESC_GUARD_EXPECT_OLDEST, set by scripts/test.sh)")
    assert importlib.metadata.version(distribution) == declared_lowest(distribution)


def test_every_yaml_function_is_a_utils_file_beside_it():
    """lm-eval <= 0.4.11 resolves ``!function a.b`` as the file ``a.py`` beside the YAML: every reference in
    our lm-eval YAMLs must be ``utils.<name>`` with that name defined in the ``utils.py`` next to it."""
    references = []
    for path in sorted(task_dir("lm_eval").rglob("*")):
        if path.suffix == ".yaml" or path.name.endswith("_yaml"):
            references += [(path, name) for name in re.findall(r"!function\s+(\S+)", path.read_text("utf-8"))]
    assert references, "no !function reference found: the check would pass vacuously"
    for path, reference in references:
        module, _, name = reference.rpartition(".")
        assert module == "utils", f"{path.name}: !function {reference} is not resolvable in lm-eval <= 0.4.11"
        assert re.search(rf"\b{name}\b", (path.parent / "utils.py").read_text("utf-8")), (path, reference)


@pytest.mark.parametrize("autoload", ["1", "0"])
def test_tasks_are_listed(autoload):
    """Zero-flag discovery (the .pth hook) and the explicit ``--include_path "$(esc-guard task-dir)"`` both
    make the installed lm-eval list our group and tasks."""
    code = (
        "import sys\nfrom lm_eval.tasks import TaskManager\n"
        "manager = TaskManager(include_path=sys.argv[1] if len(sys.argv) > 1 else None)\n"
        "print(sorted(n for n in manager.all_tasks if n.startswith('esc_eval')))"
    )
    args = [sys.executable, "-c", code] + ([] if autoload == "1" else [str(task_dir("lm_eval"))])
    result = _run(args, ESC_GUARD_TASKS_AUTOLOAD=autoload)
    assert result.returncode == 0, result.stderr[-3000:]
    names = yaml.safe_load(result.stdout.strip().splitlines()[-1])
    assert {"esc_eval", "esc_eval_en", "esc_eval_zh", "esc_eval_demo", "esc_eval_demo_en"} <= set(names)


def test_tiny_esc_eval_run_through_the_cli(tiny_model: Path, tmp_path: Path):
    """``lm_eval --tasks esc_eval_demo`` (the group of both languages) with a tiny supporter, role-player and
    rubric judge: the ``--metadata`` settings reach the task classes (rounds, judge, role-player), every
    dialogue has the turns asked for, and the judged rows land in the results file for tasks and group."""
    judge = {"judge": "llm_rubric", "judge_backend": "hf", "judge_args": f"pretrained={tiny_model},max_new_tokens=2"}
    args = [
        LM_EVAL,
        *tiny_args(tiny_model, tasks="esc_eval_demo", rounds=1, limit=1, **judge),
        "--apply_chat_template",
        "--output_path",
        str(tmp_path),
        "--log_samples",
    ]
    result = _run(args, ESC_EVAL_DIALOGUE_STORE="none")
    assert result.returncode == 0, result.stderr[-5000:]
    (results_file,) = tmp_path.glob("**/results_*.json")
    results = json.loads(results_file.read_text("utf-8"))
    for task in ("esc_eval_demo", "esc_eval_demo_en", "esc_eval_demo_zh"):
        assert {"fluency,none", "average,none", "invalid_rate,none"} <= set(results["results"][task]), task
    for task in ("esc_eval_demo_en", "esc_eval_demo_zh"):
        settings = results["configs"][task]["metadata"]["esc_eval"]
        assert settings["rounds"] == 1 and settings["judge"]["judge"] == "llm_rubric"
        assert settings["role_player"]["model"] == str(tiny_model)
    samples = [
        json.loads(line)
        for path in tmp_path.glob("**/samples_esc_eval_demo_*.jsonl")
        for line in path.read_text("utf-8").splitlines()
    ]
    assert len(samples) == 2
    for sample in samples:
        judged = json.loads(sample["filtered_resps"][0])
        assert [t["speaker"] for t in judged["transcript"]["turns"]] == ["seeker", "supporter"]
        assert len(judged["verdicts"]) == 7
