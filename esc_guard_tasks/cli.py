"""esc-guard: the command line of esc-guard-tasks (ESC-Eval for lm-eval, MLLMGuard for lmms-eval).

Run a demo, locate the task folder, convert the ESC-RANK judge, re-judge saved dialogues, and report results.
The evaluations themselves run in the harnesses: lm_eval --tasks esc_eval, lmms_eval --tasks mllmguard.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path

DEMO_OUTPUT = Path("demo_output")


def _task_dir(_: argparse.Namespace) -> int:
    from esc_guard_tasks.task_folders import task_dir

    print(task_dir())
    return 0


def demo_command(
    output: Path, rounds: int, limit: int | None, max_tokens: int, dialogue_store: Path | None = None
) -> list[str]:
    """The plain ``lm_eval`` invocation the demo runs (SmolLM2 as supporter and role-player).

    ``dialogue_store`` is named in the metadata (``none`` when off), so the logged settings show the store used."""
    from esc_guard_tasks.smollm2 import ensure_converted

    model_dir = ensure_converted()
    model_args = f"pretrained={model_dir},dtype=bfloat16"
    metadata = {
        "role_model": "hf",
        "role_model_args": model_args,
        "role_gen_kwargs": {
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
            "repetition_penalty": 1.05,
            "max_gen_toks": max_tokens,
        },
        "rounds": rounds,
        "judge": "none",
        "dialogue_store": str(dialogue_store) if dialogue_store else "none",
    }
    command = [
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        model_args,
        "--device",
        "cpu",
        "--tasks",
        "esc_eval_demo",
        "--apply_chat_template",
        "--batch_size",
        "8",
        "--gen_kwargs",
        f"max_gen_toks={max_tokens},repetition_penalty=1.1",
        "--metadata",
        json.dumps(metadata),
        "--output_path",
        str(output),
        "--log_samples",
    ]
    if limit is not None:
        command += ["--limit", str(limit)]
    return command


def _demo(args: argparse.Namespace) -> int:
    if args.benchmark == "mllmguard":
        from esc_guard_tasks import demo_mllmguard

        return demo_mllmguard.run(args.output, args.max_tokens)
    return _demo_esc_eval(args)


def _demo_esc_eval(args: argparse.Namespace) -> int:
    import shlex

    from lm_eval.__main__ import cli_evaluate

    store = demo_store()
    command = demo_command(args.output, args.rounds, args.limit, args.max_tokens, store)
    print("Running:", shlex.join(command), file=sys.stderr, flush=True)
    earlier, stored_before = set(args.output.glob("**/samples_esc_eval_demo_*.jsonl")), stored_turns(store)
    sys.argv = command
    cli_evaluate()
    samples = sorted(args.output.glob("**/samples_esc_eval_demo_*.jsonl"))
    print(
        "\nDEMO DATA: the cards are the project's own demo cards, not ESC-Eval's; "
        "SmolLM2-135M-Instruct played both the help-seeker and the supporter (a plumbing demo)."
    )
    print(
        "Judge: none — no quality scores were computed, the table shows only the empty-utterance rate. "
        "ESC-RANK, the default judge of esc_eval, runs on the 7B InternLM2 base (README, 'Judges')."
    )
    print(store_summary(store, stored_before, [path for path in samples if path not in earlier]))
    print("Transcripts (one JSON line per dialogue, turn by turn):")
    for path in samples:
        print(f"  {path}")
    return 0


def demo_store() -> Path | None:
    """The dialogue store the demo's run uses: ``ESC_EVAL_DIALOGUE_STORE`` or the default file; None when off."""
    import os

    from esc_guard_tasks.dialogue.store import store_path
    from esc_guard_tasks.esc_eval.settings import ESCSettings

    return store_path(ESCSettings.from_sources({}, os.environ).dialogue_store)


def stored_turns(store: Path | None) -> int:
    """How many turns the store file holds (0 when off or not created yet)."""
    if store is None or not store.is_file():
        return 0
    import sqlite3

    from esc_guard_tasks.dialogue.store import STORE_FILE

    with closing(sqlite3.connect(store)) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {STORE_FILE.table}").fetchone()[0])


def store_summary(store: Path | None, stored_before: int, samples: list[Path]) -> str:
    """How many of this run's turns (in ``samples``) came from the dialogue store, and how to regenerate them."""
    if store is None:
        return "Dialogue store: off — every turn was generated in this run."
    total = sum(
        len(json.loads(json.loads(line)["resps"][0][0])["turns"])
        for path in samples
        for line in path.read_text("utf-8").splitlines()
        if line.strip()
    )
    reused = max(0, total - (stored_turns(store) - stored_before))
    return (
        f"Dialogue store {store}: {reused} of {total} turns were re-used from an earlier run with the same settings"
        " (the rest were generated now). To generate every turn again, delete that file or set"
        " ESC_EVAL_DIALOGUE_STORE=none."
    )


def _rescore(args: argparse.Namespace) -> int:
    from esc_guard_tasks.harness.rescore import rescore

    rescore(args.samples, args.judge, args.judge_backend, args.judge_args, args.output)
    return 0


def main(argv: list[str] | None = None) -> int:
    from esc_guard_tasks import __version__

    parser = argparse.ArgumentParser(
        prog="esc-guard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("task-dir", help="print the task folder (for lm_eval --include_path)").set_defaults(
        run=_task_dir
    )
    demo = commands.add_parser(
        "demo",
        help="run ESC-Eval (default: demo cards, SmolLM2-135M) or MLLMGuard (demo items, a tiny random image-text"
        " model, offline) end to end",
    )
    demo.add_argument(
        "benchmark",
        nargs="?",
        default="esc_eval",
        choices=["esc_eval", "mllmguard"],
        help="esc_eval (default; lm-eval) or mllmguard (lmms-eval: scripts/setup_lmms.sh, then .venv-lmms/bin/esc-guard"
        " demo mllmguard)",
    )
    demo.add_argument("--output", type=Path, default=DEMO_OUTPUT, help="the harness's --output_path")
    demo.add_argument(
        "--rounds", type=int, default=3, help="esc_eval: seeker/supporter exchanges per dialogue (default 3)"
    )
    demo.add_argument("--limit", type=int, default=None, help="esc_eval: cards per language")
    demo.add_argument("--max-tokens", type=int, default=48, help="new tokens per utterance or answer")
    demo.set_defaults(run=_demo)
    from esc_guard_tasks import report
    from esc_guard_tasks.esc_rank import convert

    report.add_command(
        commands,
        "convert-esc-rank",
        "rewrite InternLM2 + ESC-RANK adapters into the Llama layout (no remote code)",
        convert,
    )
    again = commands.add_parser("rescore", help="judge the dialogues of saved --log_samples files again")
    again.add_argument("samples", type=Path, nargs="+", help="samples_<task>_<date>.jsonl files of esc_eval tasks")
    again.add_argument(
        "--judge", default="esc_rank", choices=["esc_rank", "llm_rubric"], help="which judge (default esc_rank)"
    )
    again.add_argument(
        "--judge-backend", default="hf", choices=["hf", "vllm", "openai"], help="where the judge runs (default hf)"
    )
    again.add_argument("--judge-args", default="", help="k=v,… as for lm_eval --model_args")
    again.add_argument("--output", type=Path, default=None, help="folder for results and samples (lm-eval layout)")
    again.set_defaults(run=_rescore)
    from esc_guard_tasks.report import transcripts

    report.add_command(
        commands,
        "transcripts",
        "write the ESC-Eval dialogues of logged samples as JSON Lines or in the reference's result/ layout",
        transcripts,
    )
    report.add_arguments(commands.add_parser("report", help="merge, tabulate and report results; judge agreement"))
    from esc_guard_tasks.esc_rank import verify

    verify.add_arguments(commands.add_parser("verify", help="check a judge setup against the reference's own scores"))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:  # bad input: the message names the file (and line or setting)
        if args.debug:
            raise
        print(f"esc-guard: error: {error} (esc-guard --debug … shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
