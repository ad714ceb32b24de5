"""The whole ESC-RANK at once: the base and every adapter folder, with one manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esc_guard_tasks.esc_eval.rubric import dimensions
from esc_guard_tasks.esc_rank.convert.adapters import convert_adapter_into
from esc_guard_tasks.esc_rank.convert.base import DEFAULT_MAX_SHARD_SIZE, convert_base_into
from esc_guard_tasks.esc_rank.convert.files import ConversionError, atomic_dir, write_manifest

# The 14 folders of haidequanbu/ESC-RANK: one adapter per rubric dimension and language, Chinese ones first.
ESC_RANK_ADAPTERS = tuple(dimension.adapter(language) for language in ("zh", "en") for dimension in dimensions())


def adapter_dirs(src_adapters: Path) -> list[Path]:
    """Every ``<name>/adapter_config.json`` folder below ``src_adapters``; weights without a config are an error."""
    if not src_adapters.is_dir():
        raise ConversionError(f"{src_adapters}: not a folder")
    found = []
    for child in sorted(src_adapters.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if (child / "adapter_config.json").is_file():
            found.append(child)
        elif any(child.glob("adapter_model.*")):
            raise ConversionError(f"{child}: has adapter weights but no adapter_config.json")
    if not found:
        raise ConversionError(f"{src_adapters}: no adapter folders (expected <name>/adapter_config.json)")
    return found


def convert_esc_rank(
    src_base: Path,
    src_adapters: Path,
    dst: Path,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    rope_scaling: str = "keep",
    tokenizer_check: str = "strict",
    overwrite: bool = False,
) -> Path:
    """Convert the InternLM2 base and every adapter folder below ``src_adapters`` into ``dst``.

    Layout: ``dst/base`` (Llama folder), ``dst/adapters/<folder name>`` (q/k/v LoRA whose
    ``base_model_name_or_path`` is ``dst/base``) and ``dst/manifest.json`` (sources, hashes,
    versions, what was converted, dropped or copied). All or nothing: written into a
    temporary sibling and renamed. Returns ``dst``.
    """
    src_base, src_adapters, dst = Path(src_base), Path(src_adapters), Path(dst)
    adapters = adapter_dirs(src_adapters)
    final_base = dst.resolve() / "base"
    tokenizers: dict[str, Any] = {}  # identical tokenizer files (base and 14 adapters) are converted once
    with atomic_dir(dst, overwrite) as out:
        (out / "base").mkdir()
        base_report = convert_base_into(
            src_base,
            out / "base",
            max_shard_size=max_shard_size,
            rope_scaling=rope_scaling,
            tokenizer_check=tokenizer_check,
            tokenizer_cache=tokenizers,
        )
        adapter_reports = {}
        for folder in adapters:
            target = out / "adapters" / folder.name
            target.mkdir(parents=True)
            adapter_reports[folder.name] = convert_adapter_into(
                folder, target, out / "base", final_base, tokenizers, tokenizer_check
            )
        names = [f.name for f in adapters]
        write_manifest(
            out,
            {
                "sources": {"base": str(src_base.resolve()), "adapters": str(src_adapters.resolve())},
                "base": {"path": "base", **base_report},
                "adapters": {n: {"path": f"adapters/{n}", **r} for n, r in adapter_reports.items()},
                "esc_rank_adapters_missing": [n for n in ESC_RANK_ADAPTERS if n not in names],
                "extra_adapters": [n for n in names if n not in ESC_RANK_ADAPTERS],
            },
        )
    return dst
