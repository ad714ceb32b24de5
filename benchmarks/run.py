"""The benchmark command: ``python -m benchmarks.run [--quick] [--skip-vllm] [--only-trials]``.

Writes ``benchmarks/results/latest.json``, ``benchmarks/REPORT.md`` and ``benchmarks/results/speedup.png``.
Every comparison runs its contestants back to back on the same model object and the same inputs, so
their ratio comes from the same minutes of (shared, noisy) machine load; the load average is recorded
with every step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import dialogue, fixtures, judges
from benchmarks.measure import measure
from esc_guard_tasks.usage import RoleUsage

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _clocked(lm: Any, run: Any) -> tuple[Any, dialogue.ForwardTimes]:
    """``run()`` with the model's forward passes timed (prefill vs decode)."""
    with dialogue.forward_clock(lm.model) as forwards:
        return run(), forwards


def _dialogue_rows(
    model: str, path: Path, sizes: list[int], settings: dialogue.DialogueSettings, repeats: int = 1
) -> list[dict]:
    """Per N: engine and raw replay ``repeats`` times, alternating (the fastest of each is kept: noise only
    ever adds time), then the sequential reference loop once. Engine and sequential runs also time their
    forward passes, so the speed-up can be split into prefill, decode and everything else."""
    lm = dialogue.load_hflm(path, settings.batch_size)
    dialogue.run_engine(lm, fixtures.cards(2), dialogue.DialogueSettings(1, 4, settings.batch_size))  # warm-up
    rows = []
    for n in sizes:
        cards = fixtures.cards(n)
        print(f"[bench] dialogues: {model} N={n}", file=sys.stderr, flush=True)
        engines, raws = [], []
        for _ in range(repeats):
            (recorded, forwards), timed = measure(
                lambda c=cards: _clocked(lm, lambda: dialogue.run_engine_recorded(lm, c, settings))
            )
            engines.append((timed, forwards, recorded))
            tokens, timed = measure(lambda r=recorded: dialogue.run_raw(lm, r.calls))
            raws.append(timed)
        engine, engine_forwards, recorded = min(engines, key=lambda m: m[0].seconds)
        raw = min(raws, key=lambda m: m.seconds)
        engine_out, calls = recorded.transcripts, recorded.calls
        generate_s = sum(call.seconds for call in calls)
        (sequential_out, sequential_forwards), sequential = measure(
            lambda c=cards: _clocked(lm, lambda: dialogue.run_sequential(lm, c, settings))
        )
        widths = [call.inputs["input_ids"].shape[1] for call in calls]  # padded prompt tokens per generate call
        rows.append(
            {
                "model": model,
                "n": n,
                **vars(settings),
                "repeats": repeats,
                "engine": engine.as_dict()
                | {
                    "forward": engine_forwards.as_dict(),
                    # where engine / raw comes from: model.generate, lm-eval's HFLM around it, the engine's own code
                    "parts_s": {
                        "model_generate": round(generate_s, 3),
                        "lm_eval_hflm": round(recorded.harness_s - generate_s, 3),
                        "engine_own": round(engine.seconds - recorded.harness_s, 3),
                    },
                },
                "raw_generate": raw.as_dict() | {"generated_tokens": tokens, "generate_calls": len(calls)},
                "sequential": sequential.as_dict() | {"forward": sequential_forwards.as_dict()},
                "speedup": round(sequential.seconds / engine.seconds, 2),
                "engine_over_raw": round(engine.seconds / raw.seconds, 3),
                "same_turns_engine_vs_sequential": round(dialogue.same_turns(engine_out, sequential_out), 4),
                "transcript_chars": dialogue.transcript_chars(engine_out),
                "prompt_tokens_range": [min(widths), max(widths)],
            }
        )
    return rows


def _trials(path: Path, n: int, settings: dialogue.DialogueSettings) -> dict[str, Any]:
    """What ``trials=3`` costs against ``trials=1``: the same N cards through the engine as ``lm_eval`` runs it,
    back to back on the same model object (the faster of two runs each: noise only ever adds time)."""
    lm = dialogue.load_hflm(path, settings.batch_size)
    dialogue.run_engine(lm, fixtures.cards(2), dialogue.DialogueSettings(1, 4, settings.batch_size))  # warm-up
    cards = fixtures.cards(n)
    rows = []
    for trials in (1, 3):
        print(f"[bench] trials: N={n} trials={trials}", file=sys.stderr, flush=True)
        runs = [measure(lambda t=trials: dialogue.run_engine_recorded(lm, cards, settings, t)) for _ in range(2)]
        recorded, timed = min(runs, key=lambda m: m[1].seconds)
        slots = sum(call.new_tokens * call.inputs["input_ids"].shape[0] for call in recorded.calls)
        # what the run records as usage (esc_eval metadata): each speaker's tokens, counted by its tokenizer
        usage = {s: sum((t.usage(s) for t in recorded.transcripts), RoleUsage()) for s in ("seeker", "supporter")}
        rows.append(
            {
                "trials": trials,
                "dialogues": len(recorded.transcripts),
                "generate_calls": len(recorded.calls),
                "generated_token_slots": slots,
                "prompt_tokens": {s: u.prompt_tokens for s, u in usage.items()},
                "completion_tokens": {s: u.completion_tokens for s, u in usage.items()},
                **timed.as_dict(),
            }
        )
    return {"model": "tiny-random-llama", "cards": n, "rounds": settings.rounds, "batch_size": settings.batch_size,
            "max_new_tokens": settings.max_new_tokens, "rows": rows}  # fmt: skip


def _only_trials(root: Path, threads: int) -> int:
    """Measure the trials cost alone and put it into the committed results and report (the rest unchanged)."""
    results = json.loads((RESULTS / "latest.json").read_text())
    tiny = dialogue.DialogueSettings(rounds=5, max_new_tokens=32, batch_size=64)
    results["trials"] = _trials(fixtures.tiny_chat_model(root), 16, tiny)
    results["trials"]["measured"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results["trials"]["torch_threads"] = threads
    from benchmarks.report import write_report

    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, HERE / "REPORT.md", RESULTS / "speedup.png")
    print(f"[bench] added the trials measurement to {HERE / 'REPORT.md'}", file=sys.stderr)
    return 0


def _memory_rows(path: Path, sizes: list[int], settings: dialogue.DialogueSettings) -> list[dict]:
    """A separate pass with tracemalloc on (it slows Python down): the driver's heap vs transcript text."""
    lm = dialogue.load_hflm(path, settings.batch_size)
    rows = []
    for n in sizes:
        cards = fixtures.cards(n)
        out, engine = measure(lambda c=cards: dialogue.run_engine(lm, c, settings), trace_heap=True)
        _, sequential = measure(lambda c=cards: dialogue.run_sequential(lm, c, settings), trace_heap=True)
        chars = dialogue.transcript_chars(out)
        rows.append(
            {
                "n": n,
                "transcript_chars": chars,
                "engine_heap_peak_mb": round(engine.heap_peak_mb, 3),
                "sequential_heap_peak_mb": round(sequential.heap_peak_mb, 3),
                "engine_rss_delta_mb": round(engine.rss_delta_mb, 1),
                "sequential_rss_delta_mb": round(sequential.rss_delta_mb, 1),
                "engine_heap_bytes_per_transcript_char": round(engine.heap_peak_mb * 2**20 / chars, 1),
            }
        )
    return rows


def _profile(path: Path, n: int, settings: dialogue.DialogueSettings) -> str:
    """pyinstrument over one engine run: where the wall time of the dialogue path goes."""
    from pyinstrument import Profiler

    lm = dialogue.load_hflm(path, settings.batch_size)
    profiler = Profiler(interval=0.005)
    profiler.start()
    dialogue.run_engine(lm, fixtures.cards(n), settings)
    profiler.stop()
    tree = profiler.output_text(unicode=False, color=False, show_all=False)
    flat = profiler.output_text(unicode=False, color=False, flat=True).splitlines()
    text = tree + "\nFunctions by own time (the top 25):\n" + "\n".join(flat[:32]) + "\n"
    return text.replace(f"{HERE.parent}/", "")  # paths relative to the checkout


def _vllm(root: Path, sizes: list[int], settings: dialogue.DialogueSettings, threads: int) -> dict[str, Any]:
    """The dialogue benchmark with both speakers on vLLM, in the vLLM venv (a separate process)."""
    python = HERE.parent / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        return {"status": "skipped: .venv-vllm not found (scripts/setup_vllm.sh)"}
    out = root / "vllm.json"
    command = [str(python), "-m", "benchmarks.vllm_dialogue", "--root", str(root), "--out", str(out)]
    command += ["--sizes", ",".join(map(str, sizes)), "--rounds", str(settings.rounds)]
    command += ["--max-new-tokens", str(settings.max_new_tokens), "--batch-size", str(settings.batch_size)]
    command += ["--threads", str(threads)]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0 or not out.is_file():
        return {"status": f"failed (exit {done.returncode})", "stderr_tail": done.stderr[-2000:]}
    return json.loads(out.read_text()) | {"status": "ok", "process_seconds": round(time.perf_counter() - began, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no SmolLM2 (a few minutes)")
    parser.add_argument("--skip-vllm", action="store_true", help="leave out the vLLM step")
    parser.add_argument("--smollm2-sizes", default="8,32,128", help="N for SmolLM2 (comma-separated)")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: every core this process may use; run on an otherwise idle machine)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where tiny models are built (default: temp)")
    parser.add_argument(
        "--only-trials",
        action="store_true",
        help="measure only trials=3 vs trials=1 and add it to the existing results and report (a minute)",
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="esc-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.only_trials:
        return _only_trials(root, args.threads)
    tiny_sizes = [8, 32] if args.quick else [8, 32, 128]
    tiny = dialogue.DialogueSettings(rounds=5, max_new_tokens=32, batch_size=64)
    smol = dialogue.DialogueSettings(rounds=5, max_new_tokens=16, batch_size=64)
    tiny_model = fixtures.tiny_chat_model(root)
    results: dict[str, Any] = {
        "command": "python -m benchmarks.run" + (" --quick" if args.quick else ""),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    results["dialogues"] = _dialogue_rows("tiny-random-llama", tiny_model, tiny_sizes, tiny, repeats=2)
    # Turn lengths nearer the reference transcripts' (seekers ~30-150 tokens, supporters ~190-590).
    long_turns = dialogue.DialogueSettings(rounds=5, max_new_tokens=64, batch_size=64, supporter_new_tokens=256)
    results["dialogues_long_turns"] = _dialogue_rows("tiny-random-llama", tiny_model, [32], long_turns)
    if not args.quick:
        sizes = [int(x) for x in args.smollm2_sizes.split(",") if x]
        results["dialogues"] += _dialogue_rows("SmolLM2-135M-Instruct", fixtures.smollm2(), sizes, smol)
    print("[bench] batching ceiling, attention kernels", file=sys.stderr, flush=True)
    results["ceiling"] = dialogue.batching_ceiling(
        dialogue.load_hflm(tiny_model, tiny.batch_size), [128, 512, 1024], tiny.batch_size, tiny.max_new_tokens
    )
    results["attention"] = dialogue.attention_kernels()
    results["memory"] = _memory_rows(tiny_model, tiny_sizes, tiny)
    results["trials"] = _trials(tiny_model, 16, tiny)
    print("[bench] judges", file=sys.stderr, flush=True)
    results["esc_rank"] = judges.esc_rank(root, dialogues=4 if args.quick else 8, batch_size=8)
    results["guardrank"] = judges.guardrank(root, items=64 if args.quick else 256, batch_size=16)
    print("[bench] profile", file=sys.stderr, flush=True)
    profile = _profile(tiny_model, 32, tiny)
    if not args.skip_vllm:
        print("[bench] vLLM", file=sys.stderr, flush=True)
        results["vllm"] = _vllm(root, tiny_sizes, tiny, args.threads)
    results["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.perf_counter() - began, 1)

    from benchmarks.report import write_report

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "profile_engine.txt").write_text(profile)
    write_report(results, HERE / "REPORT.md", RESULTS / "speedup.png")
    print(f"[bench] wrote {HERE / 'REPORT.md'} in {results['total_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
