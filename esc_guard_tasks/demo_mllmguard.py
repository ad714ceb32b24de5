"""``esc-guard demo mllmguard``: the ``mllmguard_demo`` tasks through the real lmms-eval command line, offline.

The model is the tiny random LLaVA of :mod:`esc_guard_tasks.mllmguard.demo_model` (its answers are random), the
data the project's own DEMO DATA (:mod:`esc_guard_tasks.mllmguard.demo`), the judge the offline keyword
baseline: a check of the plumbing from the CSV to the HTML report, not a measurement.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

DEMO_TASK = "mllmguard_demo"
SETUP_HINT = (
    "esc-guard demo mllmguard needs lmms-eval, which is not installed here: run scripts/setup_lmms.sh "
    "and use .venv-lmms/bin/esc-guard demo mllmguard"
)


def lmms_command(model: Path, output: Path, max_tokens: int) -> list[str]:
    """The plain lmms-eval invocation of the demo (this Python's ``-m lmms_eval``, the ``lmms-eval`` command)."""
    return [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "hf_image_text",
        "--model_args",
        f"pretrained={model},device=cpu,dtype=float32",
        "--tasks",
        DEMO_TASK,
        "--batch_size",
        "4",
        "--gen_kwargs",
        f"max_new_tokens={max_tokens}",
        "--output_path",
        str(output),
        "--log_samples",
    ]


def offline_env() -> dict[str, str]:
    """No hub access: the model and the data are local; the demo tasks name their judge themselves."""
    return os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(output: Path, max_tokens: int) -> int:
    """Run the demo, print the ASD/PAR table and write the HTML report; 1 (with the reason) when it failed."""
    if importlib.util.find_spec("lmms_eval") is None:
        print(SETUP_HINT, file=sys.stderr)
        return 1
    from esc_guard_tasks.mllmguard.demo import demo_data_dir
    from esc_guard_tasks.mllmguard.demo_model import ensure_demo_model
    from esc_guard_tasks.report import html, table
    from esc_guard_tasks.report.guard import DEMO_GROUP, mllmguard_rows
    from esc_guard_tasks.report.runs import load_runs

    model, data = ensure_demo_model(), demo_data_dir()
    command = lmms_command(model, output, max_tokens)
    print("Running:", shlex.join(command), file=sys.stderr, flush=True)
    earlier = set(output.glob("**/*_results.json"))
    process = subprocess.run(command, env=offline_env(), check=False)
    new = sorted(set(output.glob("**/*_results.json")) - earlier)
    if process.returncode != 0 or not new:  # lmms-eval exits 0 when an evaluation fails: no results file then
        print(
            f"esc-guard: the lmms-eval run failed (exit status {process.returncode}, no results file)", file=sys.stderr
        )
        return 1
    results = new[-1]
    stamp = results.name.removesuffix("_results.json")
    samples = sorted(results.parent.glob(f"{stamp}_samples_{DEMO_TASK}_*.jsonl"))
    runs = load_runs([results], samples)
    rows = mllmguard_rows(runs, DEMO_GROUP)
    print()
    print(table.render(rows, "markdown", "MLLMGuard DEMO DATA (ASD lower is better, PAR higher is better; x100)"))
    page = output / "mllmguard_demo_report.html"
    page.write_text(html.build_report(runs), "utf-8")
    print(
        "DEMO DATA: a few items written by this project (esc_guard_tasks/mllmguard/demo.py), not MLLMGuard's; "
        f"data folder {data}."
    )
    print(
        f"Model: a tiny random LLaVA built in code ({model}): its answers are RANDOM, so these numbers check the "
        "plumbing (data, generation, judging, scoring, report) and say nothing about any model."
    )
    print("Judge: keywords, the offline refusal-keyword baseline (not GuardRank, the benchmark's judge).")
    print(f"Results: {results}")
    print("Samples (one JSON line per query, with the answer and the verdict):")
    for path in samples:
        print(f"  {path}")
    print(f"HTML report: {page}")
    return 0
