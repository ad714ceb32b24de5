"""``esc-guard convert-esc-rank``: the whole conversion from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from esc_guard_tasks.esc_rank.convert.bundle import convert_esc_rank
from esc_guard_tasks.esc_rank.convert.files import MANIFEST, ConversionError
from esc_guard_tasks.esc_rank.convert.tokenizer import TOKENIZER_CHECKS


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``esc-guard convert-esc-rank`` (for mounting as a subcommand)."""
    parser.add_argument("src_base", type=Path, help="local folder of internlm/internlm2-chat-7b")
    parser.add_argument("src_adapters", type=Path, help="local folder of haidequanbu/ESC-RANK (one folder per adapter)")
    parser.add_argument("dst", type=Path, help="output folder (gets base/, adapters/<name>/, manifest.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    parser.add_argument(
        "--max-shard-size", default="2GB", help="largest output safetensors shard, e.g. 2GB or 500MB (default 2GB)"
    )
    parser.add_argument(
        "--rope-scaling",
        choices=("keep", "drop"),
        default="keep",
        help="keep InternLM2's dynamic rope scaling (exact in transformers) or drop it "
        "(exact in every engine, incl. vLLM, up to max_position_embeddings tokens)",
    )
    parser.add_argument(
        "--tokenizer-check",
        choices=TOKENIZER_CHECKS,
        default="strict",
        help="compare the converted tokenizer with SentencePiece on probe texts: fail on a difference (strict, "
        "default), only record it in manifest.json (report), or skip (off)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``convert-esc-rank`` command; print the output folder on stdout."""
    try:
        dst = convert_esc_rank(
            args.src_base,
            args.src_adapters,
            args.dst,
            max_shard_size=args.max_shard_size,
            rope_scaling=args.rope_scaling,
            tokenizer_check=args.tokenizer_check,
            overwrite=args.overwrite,
        )
    except (ConversionError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    manifest = json.loads((dst / MANIFEST).read_text("utf-8"))
    if manifest["esc_rank_adapters_missing"]:
        print(f"note: ESC-RANK adapters not found: {', '.join(manifest['esc_rank_adapters_missing'])}", file=sys.stderr)
    print(dst)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``esc-guard convert-esc-rank SRC_BASE SRC_ADAPTERS DST`` as a stand-alone entry point."""
    parser = argparse.ArgumentParser(
        prog="esc-guard convert-esc-rank",
        description="Convert ESC-RANK (InternLM2 + wqkv LoRA adapters) to Llama + q/k/v LoRA, without remote code.",
    )
    args = add_arguments(parser).parse_args(argv)
    return args.run(args)
