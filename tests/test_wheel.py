"""The wheel: right contents, installs with its dependencies into a fresh venv, and the task runs from there."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(REPO)],
        check=True,
        timeout=600,
    )
    (path,) = dist.glob("esc_guard_tasks-*.whl")
    return path


def test_wheel_contents(wheel):
    """task_yamls and metrics ship inside the esc_guard_tasks namespace (never as top-level packages),
    with the YAML templates, prompt strings, demo cards and the discovery .pth."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "esc_guard_tasks.pth",
        "esc_guard_tasks/autoload.py",
        "esc_guard_tasks/metrics/esc_eval.py",
        "esc_guard_tasks/task_yamls/lm_eval/esc_eval/esc_eval.yaml",
        "esc_guard_tasks/task_yamls/lm_eval/esc_eval/esc_eval_en.yaml",
        "esc_guard_tasks/task_yamls/lm_eval/esc_eval/esc_eval_zh.yaml",
        "esc_guard_tasks/task_yamls/lm_eval/esc_eval/_esc_eval_template_yaml",
        "esc_guard_tasks/esc_eval/prompts.json",
        "esc_guard_tasks/mllmguard/templates.json",
        "esc_guard_tasks/esc_eval/demo_cards/card_demo_en.json",
        "esc_guard_tasks/esc_eval/demo_cards/card_demo_zh.json",
        "esc_guard_tasks/task_yamls/lmms_eval/__init__.py",
        "esc_guard_tasks/task_yamls/lmms_eval/mllmguard/_mllmguard_template_yaml",
        "esc_guard_tasks/task_yamls/lmms_eval/mllmguard/_mllmguard_stub.jsonl",
        "esc_guard_tasks/task_yamls/lmms_eval/mllmguard/README.md",
        "esc_guard_tasks/task_yamls/lmms_eval/mllmguard/mllmguard.yaml",
        "esc_guard_tasks/task_yamls/lmms_eval/mllmguard/mllmguard_truthfulness.yaml",
        *(
            f"esc_guard_tasks/task_yamls/lmms_eval/mllmguard/mllmguard_{name}.yaml"
            for name in ("privacy", "bias", "toxicity", "legality")
            + ("hallucination", "noise_injection", "position_swapping")
        ),
    }
    assert expected <= names
    package = REPO / "esc_guard_tasks"
    sources = {f"esc_guard_tasks/{p.relative_to(package)}" for p in package.glob("**/*.py")}
    sources |= {f"esc_guard_tasks/metrics/{p.name}" for p in REPO.glob("metrics/*.py")}
    assert sources <= names, f"modules missing from the wheel: {sorted(sources - names)}"
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"esc_guard_tasks", "esc_guard_tasks.pth"}
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[lm_eval.tasks]" in text and "esc_guard_tasks = esc_guard_tasks.task_yamls.lm_eval" in text
    assert "[lmms_eval.models]" in text
    assert "hf_image_text = esc_guard_tasks.harness.lmms_eval_discovery:model_manifests" in text
    # typed package, the lmms_eval command, and the licence texts beside the metadata
    assert "esc_guard_tasks/py.typed" in names
    assert "lmms_eval = esc_guard_tasks.lmms_eval_cli:main" in text
    licences = {n.rsplit("/", 1)[-1] for n in names if ".dist-info/" in n}
    assert {"LICENSE", "NOTICE"} <= licences


@pytest.mark.slow
def test_fresh_venv_install_runs_esc_eval(wheel, tmp_path, tiny_model, card_dir):
    """`pip install <wheel>` into an empty venv, then plain `lm_eval --tasks esc_eval` (no --include_path,
    no environment variable) runs, and `lm_eval ls tasks` lists the three names."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=1200)
    subprocess.run([*pip, str(wheel)], check=True, timeout=1200)

    lm_eval = str(venv / "bin" / "lm_eval")
    listing = subprocess.run([lm_eval, "ls", "tasks"], capture_output=True, text=True, check=True, cwd=tmp_path)
    names = {cell.strip() for line in listing.stdout.splitlines() for cell in line.split("|")}
    assert {"esc_eval", "esc_eval_en", "esc_eval_zh"} <= names

    metadata = {
        "data_dir": str(card_dir),
        "role_model_args": f"pretrained={tiny_model}",
        "role_gen_kwargs": {"max_gen_toks": 4},
        "rounds": 1,
        "judge": "none",
    }
    run = subprocess.run(
        [
            lm_eval,
            "--model",
            "hf",
            "--model_args",
            f"pretrained={tiny_model}",
            "--device",
            "cpu",
            "--tasks",
            "esc_eval",
            "--apply_chat_template",
            "--batch_size",
            "4",
            "--limit",
            "1",
            "--gen_kwargs",
            "max_gen_toks=4",
            "--metadata",
            json.dumps(metadata),
            "--output_path",
            "out",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = (tmp_path / "out").glob("**/results_*.json")
    assert set(json.loads(results.read_text())["results"]) == {"esc_eval", "esc_eval_en", "esc_eval_zh"}
    assert "esc_eval_en" in run.stdout
