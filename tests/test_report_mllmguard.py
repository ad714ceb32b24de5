"""`esc-guard report` on a real lmms-eval run of MLLMGuard (tiny LLaVA, synthetic data folder, keyword judge).

Run in the lmms-eval venv (scripts/test.sh does)::

    .venv-lmms/bin/pytest -m lmms tests/test_report_mllmguard.py
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.lmms,
    pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed here"),
]


@pytest.fixture(scope="module")
def lmms_run(tmp_path_factory):
    """`lmms-eval --tasks mllmguard` (all seven configs, both languages) with the venv's installed package."""
    from mllmguard_fixtures import build_mllmguard_tree
    from test_lmms_eval import build_tiny_llava, lmms_args, offline_env

    work = tmp_path_factory.mktemp("report_lmms")
    model = build_tiny_llava(work / "llava")
    data = build_mllmguard_tree(work / "data")
    command = [str(Path(sys.executable).parent / "lmms-eval"), *lmms_args(model, "mllmguard", work / "out")]
    run = subprocess.run(command, env=offline_env(data, work), cwd=work, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (results,) = (work / "out").glob("**/*_results.json")
    return results, sorted((work / "out").glob("**/*_samples_*.jsonl"))


def test_table_rows_equal_the_results(lmms_run):
    """The leaderboard's ASD/PAR per dimension and overall are the results file's values."""
    from esc_guard_tasks.report.guard import mllmguard_rows
    from esc_guard_tasks.report.runs import load_runs

    results, _ = lmms_run
    data = json.loads(results.read_text("utf-8"))
    (row,) = mllmguard_rows(load_runs([results]))
    for dimension in ("privacy", "bias", "toxicity", "truthfulness", "legality", "overall"):
        task = "mllmguard" if dimension == "overall" else f"mllmguard_{dimension}"
        source = data["results"].get(task) or data["groups"][task]
        for name in ("asd", "par"):
            expected, got = source[f"{name},none"], row[f"{dimension} {name.upper()}"]
            assert (math.isnan(expected) and math.isnan(got)) or got == expected, (dimension, name)


def test_html_intervals_come_from_the_samples_and_images_are_embedded(lmms_run, tmp_path):
    """Recomputed from the logged samples without resampling, every dimension and overall equals the harness's
    value (so the intervals are over the same statistic); the page embeds each sample's image, prompt and answer."""
    from esc_guard_tasks.report import guard, html
    from esc_guard_tasks.report.runs import load_runs

    results, samples = lmms_run
    (run,) = load_runs([results], samples)
    records = [s.record for task in run.samples.values() for s in task]
    for dimension in ("privacy", "bias", "toxicity", "truthfulness", "legality", "mllmguard"):
        row = run.results["results"].get(f"mllmguard_{dimension}") or run.results["results"][dimension]
        for name in ("asd", "par"):
            value = guard._guard_value(records, dimension, name, "reference")
            expected = row[f"{name},none"]
            assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected), (dimension, name)
    estimates = guard.guard_estimates(run, "asd", seed=5, resamples=100)
    again = guard.guard_estimates(run, "asd", seed=5, resamples=100)
    assert repr(estimates) == repr(again), "same seed, same intervals"  # repr: undefined (NaN) rows compare equal
    page = html.build_report([run], resamples=100, max_samples=1000)
    assert page.count("data:image/png;base64,") == 2 + len(records)  # ASD + PAR charts, one image per sample
    for record in records:
        assert record["query_id"] in page


def test_agreement_pairs_real_samples_by_query_id(lmms_run, tmp_path):
    """Labels equal to the judge's verdicts on privacy give ACC 100; a query id that was not run is reported."""
    from esc_guard_tasks.report import agreement

    _, samples = lmms_run
    privacy = next(p for p in samples if p.name.endswith("_samples_mllmguard_privacy.jsonl"))
    verdicts = [json.loads(line)["judge"] for line in privacy.read_text("utf-8").splitlines()]
    labels = tmp_path / "labels.jsonl"
    lines = [{"query_id": v["query_id"], "score": v["score"]} for v in verdicts] + [
        {"query_id": "privacy/x", "score": 0}
    ]
    labels.write_text("".join(json.dumps(x) + "\n" for x in lines), "utf-8")
    result = agreement.report([labels], samples, resamples=100)
    (row,) = result["rows"]
    assert (row["dimension"], row["n"], row["acc"]["value"]) == ("privacy", len(verdicts), 100.0)
    assert result["unmatched"]["labels_without_sample"] == [f"{labels}:{len(lines)}: mllmguard ('privacy/x',)"]
    assert len(result["unmatched"]["samples_without_label"]) == sum(1 for p in samples for _ in p.open()) - len(
        verdicts
    )
