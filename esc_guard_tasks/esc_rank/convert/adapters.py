"""ESC-RANK's fused-``wqkv`` LoRA adapters rewritten as q/k/v LoRA that applies exactly the same weight delta."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esc_guard_tasks.esc_rank.convert.base import iter_tensors
from esc_guard_tasks.esc_rank.convert.files import (
    ConversionError,
    read_json,
    save_safetensors,
    sha256,
    write_conversion,
    write_json,
)
from esc_guard_tasks.esc_rank.convert.geometry import Geometry, config_source, split_wqkv
from esc_guard_tasks.esc_rank.convert.tokenizer import convert_tokenizer_into, copy_the_rest

if TYPE_CHECKING:
    import torch


_LORA_TARGETS = ["q_proj", "k_proj", "v_proj"]
_ADAPTER_KEY = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.attention\.wqkv\.lora_([AB])\.weight")


def _adapter_weights(src: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (src / name).is_file():
            return src / name
    raise ConversionError(f"{src}: no adapter_model.safetensors or adapter_model.bin")


def _check_adapter_config(cfg: dict[str, Any], where: Path) -> None:
    targets = cfg.get("target_modules")
    names = [targets] if isinstance(targets, str) else list(targets or [])
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ConversionError(f"{where}: peft_type {cfg.get('peft_type')!r}; only LORA adapters are converted")
    if names != ["wqkv"]:
        raise ConversionError(f"{where}: target_modules {targets!r}; ESC-RANK adapters target exactly ['wqkv']")
    problems = {
        "modules_to_save": cfg.get("modules_to_save"),
        "use_dora": cfg.get("use_dora"),
        "fan_in_fan_out": cfg.get("fan_in_fan_out"),
        "rank_pattern": cfg.get("rank_pattern"),
        "alpha_pattern": cfg.get("alpha_pattern"),
    }
    unsupported = {k: v for k, v in problems.items() if v}
    if cfg.get("bias", "none") != "none":
        unsupported["bias"] = cfg["bias"]
    if unsupported:
        raise ConversionError(f"{where}: unsupported LoRA options {unsupported} (ESC-RANK uses none of them)")
    if not isinstance(cfg.get("r"), int) or cfg["r"] <= 0:
        raise ConversionError(f"{where}: r must be a positive integer, got {cfg.get('r')!r}")


def convert_adapter_into(
    src: Path,
    out: Path,
    base_config: dict[str, Any] | str | os.PathLike[str],
    converted_base: Path,
    tokenizer_cache: dict[str, Any] | None = None,
    tokenizer_check: str = "strict",
) -> dict[str, Any]:
    """Convert one adapter into the existing folder ``out``; return its manifest entry."""
    config_path = src / "adapter_config.json"
    adapter_cfg = read_json(config_path)
    _check_adapter_config(adapter_cfg, config_path)
    cfg, cfg_where = config_source(base_config)
    geo = Geometry.from_config(cfg, cfg_where)
    rank = adapter_cfg["r"]
    weights = _adapter_weights(src)
    tensors = dict(iter_tensors(weights))
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _ADAPTER_KEY.fullmatch(key)
        if not match:
            raise ConversionError(f"{weights}: unexpected tensor {key!r} (expected only attention.wqkv lora_A/lora_B)")
        layer, which = int(match.group(1)), match.group(2)
        if layer >= geo.num_layers:
            raise ConversionError(f"{weights}: {key!r} names layer {layer}, but {cfg_where} has {geo.num_layers}")
        shape = (rank, geo.hidden_size) if which == "A" else (geo.qkv_rows, rank)
        if tuple(tensor.shape) != shape:
            raise ConversionError(
                f"{weights}: {key} has shape {tuple(tensor.shape)}; r={rank} and {cfg_where} imply {shape}"
            )
        layers.setdefault(layer, {})[which] = tensor
    if not layers:
        raise ConversionError(f"{weights}: holds no LoRA tensors")
    out_tensors: dict[str, torch.Tensor] = {}
    for layer, pair in sorted(layers.items()):
        if set(pair) != {"A", "B"}:
            raise ConversionError(f"{weights}: layer {layer} has lora_{''.join(pair)} without its partner")
        prefix = f"base_model.model.model.layers.{layer}.self_attn."
        for name, b_part in zip(_LORA_TARGETS, split_wqkv(pair["B"], geo), strict=True):
            out_tensors[f"{prefix}{name}.lora_A.weight"] = pair["A"].contiguous().clone()
            out_tensors[f"{prefix}{name}.lora_B.weight"] = b_part
    save_safetensors(out_tensors, out / "adapter_model.safetensors")
    new_cfg = dict(adapter_cfg)
    new_cfg["target_modules"] = list(_LORA_TARGETS)
    base_path = str(Path(converted_base).resolve())
    new_cfg["base_model_name_or_path"] = base_path
    write_json(out / "adapter_config.json", new_cfg)
    tokenizer = None
    if (src / "tokenizer.model").is_file():
        tokenizer = convert_tokenizer_into(
            src, out, check=tokenizer_check, vocab_size=geo.vocab_size, cache=tokenizer_cache, label=src.name
        )
    return {
        "source": str(src.resolve()),
        "source_weights": weights.name,
        "source_weights_sha256": sha256(weights),
        "r": rank,
        "lora_alpha": adapter_cfg.get("lora_alpha"),
        "layers": len(layers),
        "tensors_out": len(out_tensors),
        "base_model_name_or_path": {
            "source": adapter_cfg.get("base_model_name_or_path"),
            "written": base_path,
        },
        "tokenizer": tokenizer,
        **copy_the_rest(src, out, {"adapter_config.json"}),
    }


def convert_adapter(
    src: Path,
    dst: Path,
    base_config: dict[str, Any] | str | os.PathLike[str],
    converted_base: Path,
    *,
    tokenizer_check: str = "strict",
    overwrite: bool = False,
) -> None:
    """Rewrite one fused-``wqkv`` LoRA adapter folder as q/k/v LoRA for the converted base (atomically).

    ``base_config`` (the InternLM2 or converted config, as a dict, config.json or folder)
    gives the head layout used to split ``lora_B``; ``lora_A`` is shared by q, k and v.
    The new ``adapter_config.json`` targets ``q_proj/k_proj/v_proj`` and points at
    ``converted_base``; all other fields are kept. Tokenizer files, if any, are converted
    like the base's; other files (``all_results.json`` …) are copied, ``*.py`` dropped.
    """
    write_conversion(
        dst,
        overwrite,
        "adapter",
        lambda out: convert_adapter_into(Path(src), out, base_config, Path(converted_base), None, tokenizer_check),
    )
