"""Hand-made results and samples files in the harnesses' layouts (edge cases for the report commands), and a
real headless Chromium that renders a page, takes a screenshot and collects what the page wrote to its console.

Chromium: Debian's ``chromium`` package (scripts/test.sh installs it on CI). Its ``--enable-logging=stderr
--v=1`` log has one ``INFO:CONSOLE`` line per console message and uncaught error; our report writes none.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STAMP = "2026-01-01T00-00-00.000000"
DIMENSIONS = ("fluency", "expression", "empathy", "information", "humanoid", "skillful", "overall")
XSS_SCRIPT = '<script>console.error("xss-script")</script>'
XSS_ONERROR = "<img src=x onerror=\"console.error('xss-onerror')\">"
PAYLOAD = f"{XSS_SCRIPT} and {XSS_ONERROR}"


def esc_row(scores: dict[str, float]) -> dict[str, Any]:
    valid = [v for v in scores.values() if not math.isnan(v)]
    average = sum(valid) / len(valid) if valid else math.nan
    return {f"{k},none": v for k, v in (scores | {"average": average}).items()}


def esc_sample(card_id: int, language: str, scores: dict[str, int | None], text: str = "hello") -> dict[str, Any]:
    transcript = {
        "card_id": card_id,
        "language": language,
        "greeting": "Hi, I am here for you.",
        "turns": [{"speaker": "seeker", "text": text}, {"speaker": "supporter", "text": f"reply to {text}"}],
    }
    verdicts = [
        {"dimension": d, "score": s, "reference_score": s or 0, "raw": f"{s} {text}"} for d, s in scores.items()
    ]
    return {
        "doc_id": 0,
        "doc": {"card_id": card_id, "language": language},
        "filtered_resps": [json.dumps({"transcript": transcript, "verdicts": verdicts})],
    }


def write_run(
    folder: Path,
    model: str,
    rows: dict[str, dict[str, Any]],
    samples: dict[str, list[dict[str, Any]]] | None = None,
    harness: str = "lm_eval",
    groups: dict[str, dict[str, Any]] | None = None,
) -> tuple[Path, list[Path]]:
    """A results file (+ samples files) named as the given harness names them."""
    folder.mkdir(parents=True, exist_ok=True)
    lmms = harness == "lmms_eval"
    results = {
        "results": rows,
        "groups": groups or {},
        "configs": {t: {"task": t} for t in rows},
        "versions": {t: 0.1 for t in rows},
        "n-shot": {t: 0 for t in rows},
        "higher_is_better": {},
        "n-samples": {
            t: {"original": len((samples or {}).get(t, [])), "effective": len((samples or {}).get(t, []))} for t in rows
        },
        "config": {"model": "hf", "model_args": f"pretrained={model}" if lmms else {"pretrained": model}},
        "model_name": model,
    }
    stamp = "20260101_000000" if lmms else STAMP
    path = folder / (f"{stamp}_results.json" if lmms else f"results_{stamp}.json")
    path.write_text(json.dumps(results), "utf-8")
    written = []
    for task, lines in (samples or {}).items():
        name = f"{stamp}_samples_{task}.jsonl" if lmms else f"samples_{task}_{stamp}.jsonl"
        written.append(folder / name)
        written[-1].write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), "utf-8")
    return path, written


def guard_sample(query_id: str, config: str, dimension: str, score: int | None, text: str, image: str) -> dict:
    item, _, variant = query_id.rpartition("/")
    record = {
        "query_id": query_id,
        "item_id": item,
        "config": config,
        "dimension": dimension,
        "subtask": "Personal Privacy",
        "language": "en",
        "variant": variant,
        "image_path": image,
        "prompt": text,
        "response": f"answer: {text}",
        "score": score,
        "judge_reply": f"{score} {text}",
        "task": f"mllmguard_{config}",
    }
    return {"doc_id": 0, "filtered_resps": record["response"], "judge": record}


# ---------------------------------------------------------------------------------------------- chromium


@dataclass
class Rendered:
    screenshot: Path
    console: list[str]
    dom: str


def chromium() -> str:
    """The browser; skipped only outside scripts/test.sh, which installs it and requires it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("ESC_GUARD_BROWSER_REQUIRED", "0") != "0":
        pytest.fail("chromium is missing: scripts/test.sh installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium, or run scripts/test.sh)")


def render_in_chromium(page: Path, work: Path, *, width: int = 1200, height: int = 1600) -> Rendered:
    """Screenshot the page (a ``width`` × ``height`` window) and dump its DOM after scripts ran; console lines
    from both runs."""
    browser = chromium()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=1",
        f"--window-size={width},{height}",
    ]
    screenshot = work / "screenshot.png"
    console = []
    outputs = []
    for index, mode in enumerate((f"--screenshot={screenshot}", "--dump-dom")):
        run = subprocess.run(
            [browser, *flags, f"--user-data-dir={work / f'profile{index}'}", mode, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        console += [line for line in run.stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]
        outputs.append(run.stdout)
    return Rendered(screenshot, console, outputs[1])
