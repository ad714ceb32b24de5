"""The offline MLLMGuard demo: the project's DEMO DATA, the ``mllmguard_demo*`` tasks and ``esc-guard demo mllmguard``.

The fast tests run anywhere; the end-to-end run needs lmms-eval (``scripts/setup_lmms.sh``, then
``.venv-lmms/bin/pytest -m lmms tests/test_mllmguard_demo.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from esc_guard_tasks.mllmguard import data as mdata
from esc_guard_tasks.mllmguard.demo import demo_data_dir
from esc_guard_tasks.mllmguard.settings import TaskSettings
from esc_guard_tasks.mllmguard.taxonomy import CONFIGS, DIMENSIONS, LANGUAGES, VARIANTS, task_name

TASK_DIR = Path(__file__).resolve().parents[1] / "task_yamls" / "lmms_eval" / "mllmguard"
HAS_LMMS = importlib.util.find_spec("lmms_eval") is not None


def test_demo_data_has_every_config_both_languages_and_the_pairs(tmp_path):
    """The demo data, read by the benchmark's own loader, holds every config in EN and ZH, and each truthfulness
    item expands into its pair (free/option, clean/noisy, original/swapped) with both images present."""
    root = demo_data_dir(tmp_path)
    for config in CONFIGS:
        result = mdata.load_queries(config, "all", data_dir=root)
        assert not result.skipped, (config, result.skipped)
        assert {q.language for q in result.queries} == set(LANGUAGES), config
        for language in LANGUAGES:
            assert mdata.load_queries(config, language, data_dir=root).queries, (config, language)
        per_item: dict[str, list] = {}
        for query in result.queries:
            per_item.setdefault(query.item_id, []).append(query)
        for queries in per_item.values():
            assert tuple(q.variant for q in queries) == VARIANTS[config], config
            assert all(Path(q.image_path).is_file() for q in queries)
        if config in ("noise-injection", "position-swapping"):
            assert all(len({q.image_path for q in queries}) == 2 for queries in per_item.values()), config


def test_demo_data_is_written_once_and_reused(tmp_path):
    """A second call returns the same complete folder without rewriting it (the marker decides)."""
    first = demo_data_dir(tmp_path)
    stamp = (first / "privacy" / "prompt.csv").stat().st_mtime_ns
    assert demo_data_dir(tmp_path) == first
    assert (first / "privacy" / "prompt.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left behind


def test_demo_setting_points_the_task_at_the_demo_data(tmp_path, monkeypatch):
    """``demo: true`` reads the demo folder (also over MLLMGUARD_DATA_DIR) and is recorded in the settings; together
    with ``data_dir`` or as a non-boolean it is an error naming the task."""
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path))
    settings = TaskSettings.resolve("t", "privacy", {"demo": True}, {"MLLMGUARD_DATA_DIR": "/elsewhere"})
    assert settings.data_dir == str(demo_data_dir(tmp_path)) and settings.public()["demo"] is True
    assert TaskSettings.resolve("t", "privacy", {}, {}).demo is False
    with pytest.raises(ValueError, match="task t: metadata sets both demo and data_dir"):
        TaskSettings.resolve("t", "privacy", {"demo": True, "data_dir": "x"}, {})
    with pytest.raises(ValueError, match="'demo' of t: must be true or false"):
        TaskSettings.resolve("t", "privacy", {"demo": "yes"}, {})


def test_demo_task_yamls_are_marked_and_named_apart():
    """Every config has a ``mllmguard_demo_<config>`` task that includes the benchmark task, reads the demo data
    with the keyword judge, and is marked DEMO DATA; the demo groups list only demo tasks."""
    for config in CONFIGS:
        name = task_name(config).replace("mllmguard_", "mllmguard_demo_", 1)
        text = (TASK_DIR / f"{name}.yaml").read_text("utf-8")
        cfg = yaml.safe_load(text)
        assert "DEMO DATA" in text
        assert cfg["task"] == name and cfg["include"] == f"{task_name(config)}.yaml"
        assert cfg["metadata"]["demo"] is True and cfg["metadata"]["judge"] == "keywords"
    for group in ("mllmguard_demo", "mllmguard_demo_truthfulness"):
        cfg = yaml.safe_load((TASK_DIR / f"{group}.yaml").read_text("utf-8"))
        assert cfg["group"] == group and all(task.startswith("mllmguard_demo_") for task in cfg["task"])


def test_demo_without_lmms_eval_prints_the_setup_line(monkeypatch, capsys, tmp_path):
    """Without lmms-eval the demo says in one line how to get it and exits non-zero (nothing is written)."""
    from esc_guard_tasks import demo_mllmguard

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lmms_eval" else real(name, *a))
    assert demo_mllmguard.run(tmp_path / "out", 4) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scripts/setup_lmms.sh" in err and ".venv-lmms/bin/esc-guard demo mllmguard" in err
    assert not (tmp_path / "out").exists()


def test_demo_without_argument_runs_esc_eval(monkeypatch):
    """``esc-guard demo`` keeps running the ESC-Eval demo; ``demo mllmguard`` runs the MLLMGuard one."""
    from esc_guard_tasks import cli, demo_mllmguard

    called = []
    monkeypatch.setattr(cli, "_demo_esc_eval", lambda args: called.append("esc_eval") or 0)
    monkeypatch.setattr(demo_mllmguard, "run", lambda output, tokens: called.append("mllmguard") or 0)
    assert cli.main(["demo"]) == 0 and cli.main(["demo", "mllmguard"]) == 0
    assert called == ["esc_eval", "mllmguard"]


@pytest.mark.lmms
@pytest.mark.slow
@pytest.mark.skipif(not HAS_LMMS, reason="lmms-eval is not installed here: run scripts/setup_lmms.sh first")
def test_demo_mllmguard_runs_offline_and_reports_apart(tmp_path):
    """``esc-guard demo mllmguard`` runs the real lmms-eval CLI offline, prints ASD and PAR of all five dimensions
    and the overall, says the answers are random, writes the HTML page it names, and its rows are named
    ``mllmguard_demo*`` only: none under the benchmark's task names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLLMGUARD_")}
    env |= {"ESC_GUARD_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "esc_guard_tasks.cli", "demo", "mllmguard", "--output", "out", "--max-tokens", "4"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "-m lmms_eval --model hf_image_text" in run.stderr and "--tasks mllmguard_demo" in run.stderr
    table = run.stdout[run.stdout.index("MLLMGuard DEMO DATA") :]
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    for part in (*DIMENSIONS, "overall"):
        assert f"{part} ASD" in header and f"{part} PAR" in header, part
    (row,) = [line for line in table.splitlines() if "[DEMO DATA]" in line]
    assert len(re.findall(r"\d+\.\d\d", row)) >= 2  # at least the overall ASD and PAR are numbers
    assert "RANDOM" in run.stdout
    page = Path(re.search(r"HTML report: (.+)", run.stdout).group(1))
    assert (tmp_path / page).is_file() and "DEMO DATA" in (tmp_path / page).read_text("utf-8")
    (results_file,) = (tmp_path / "out").glob("**/*_results.json")
    results = json.loads(results_file.read_text("utf-8"))
    names = set(results["results"]) | set(results.get("groups", {})) | set(results["configs"])
    assert names and all(name.startswith("mllmguard_demo") for name in names), names
    benchmark = {task_name(c) for c in CONFIGS} | {f"mllmguard_{d}" for d in DIMENSIONS} | {"mllmguard"}
    assert not names & benchmark
    for name, config in results["configs"].items():
        assert config["metadata"]["mllmguard"]["settings"]["demo"] is True, name
    from esc_guard_tasks.report.guard import mllmguard_rows
    from esc_guard_tasks.report.runs import load_runs

    assert mllmguard_rows(load_runs([results_file])) == []  # the benchmark's table never shows demo rows
