"""The base model: an InternLM2 folder becomes a ``LlamaForCausalLM`` folder (config, weights, tokenizer).

Weights are streamed one tensor at a time (safetensors) or one shard at a time (``.bin``),
and written in output shards of ``max_shard_size``, so a 7B model converts in a few GB of RAM.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esc_guard_tasks.esc_rank.convert.files import (
    ConversionError,
    read_json,
    save_safetensors,
    sha256,
    write_conversion,
    write_json,
)
from esc_guard_tasks.esc_rank.convert.geometry import Geometry, llama_config, split_wqkv
from esc_guard_tasks.esc_rank.convert.tokenizer import check_mode, convert_tokenizer_into, copy_the_rest

if TYPE_CHECKING:
    import torch


DEFAULT_MAX_SHARD_SIZE = 2 * 1024**3
_LAYER_KEY = re.compile(
    r"model\.layers\.(\d+)\."
    r"(attention\.wqkv|attention\.wo|feed_forward\.w1|feed_forward\.w2|feed_forward\.w3|attention_norm|ffn_norm)"
    r"\.weight"
)
# Non-persistent rotary buffers that some old exports contain; derived, so dropped.
_DROPPABLE_KEY = re.compile(r"model\.layers\.\d+\.attention\.rotary_emb\.(inv_freq|cos_cached|sin_cached)")
_LAYER_TARGET = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def _parse_size(value: str | int) -> int:
    """``2147483648``, ``"2GB"``, ``"500MB"`` (powers of 1024) -> bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*", value.upper())
    if not match:
        raise ValueError(f"not a size: {value!r}")
    unit = (match.group(2) or "B").rstrip("B").rstrip("I")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(unit or " "))


def _weight_shards(src: Path) -> tuple[list[Path], dict[str, str] | None, Path | None]:
    """(shard files, weight_map or None, index file or None); safetensors preferred over .bin."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = src / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index}: no weight_map")
            shards = []
            for name in sorted(set(weight_map.values())):
                shard = src / name
                if not shard.is_file():
                    raise ConversionError(f"{shard}: shard listed in {index.name} is missing")
                shards.append(shard)
            return shards, weight_map, index
        if (src / single).is_file():
            return [src / single], None, None
    raise ConversionError(
        f"{src}: no weights (expected model.safetensors[.index.json] or pytorch_model.bin[.index.json])"
    )


def iter_tensors(shard: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of one shard: safetensors one at a time; ``.bin`` memory-mapped when possible."""
    if shard.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            handle = safe_open(str(shard), framework="pt")
        except Exception as err:  # noqa: BLE001 - safetensors raises several unrelated types
            raise ConversionError(f"{shard}: cannot read safetensors ({err})") from None
        with handle as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield key, f.get_tensor(key)
        return
    import torch

    try:
        try:
            state = torch.load(str(shard), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            state = torch.load(str(shard), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise ConversionError(f"{shard}: cannot load with torch.load(weights_only=True) ({err})") from None
    if not isinstance(state, dict):
        raise ConversionError(f"{shard}: expected a state dict, got {type(state).__name__}")
    keys = list(state)
    for key in keys:
        yield key, state.pop(key)


class _ShardWriter:
    """Collect output tensors and flush a safetensors shard whenever ``max_bytes`` would be exceeded."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.folder / f".part-{len(self.files):05d}.safetensors"
        save_safetensors(self.pending, path)
        self.files.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Rename parts to the HF shard names; write the index when there is more than one."""
        self.flush()
        if len(self.files) == 1:
            self.files[0][0].rename(self.folder / "model.safetensors")
            return ["model.safetensors"]
        names, weight_map = [], {}
        for number, (path, keys) in enumerate(self.files, 1):
            name = f"model-{number:05d}-of-{len(self.files):05d}.safetensors"
            path.rename(self.folder / name)
            names.append(name)
            weight_map.update(dict.fromkeys(keys, name))
        write_json(
            self.folder / "model.safetensors.index.json",
            {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))},
        )
        return names


def _expect_shape(tensor: torch.Tensor, shape: tuple[int, ...], key: str, shard: Path, config: Path) -> None:
    if tuple(tensor.shape) != shape:
        raise ConversionError(f"{shard}: {key} has shape {tuple(tensor.shape)}, but {config} implies {shape}")


def _map_tensor(
    key: str, tensor: torch.Tensor, geo: Geometry, shard: Path, config: Path
) -> list[tuple[str, torch.Tensor]]:
    """InternLM2 key + tensor -> Llama key(s) + tensor(s), with the shape the config implies."""
    hidden, inter = geo.hidden_size, geo.intermediate_size
    if key == "model.tok_embeddings.weight":
        _expect_shape(tensor, (geo.vocab_size, hidden), key, shard, config)
        return [("model.embed_tokens.weight", tensor)]
    if key == "output.weight":
        _expect_shape(tensor, (geo.vocab_size, hidden), key, shard, config)
        return [("lm_head.weight", tensor)]
    if key == "model.norm.weight":
        _expect_shape(tensor, (hidden,), key, shard, config)
        return [(key, tensor)]
    match = _LAYER_KEY.fullmatch(key)
    if not match or int(match.group(1)) >= geo.num_layers:
        raise ConversionError(f"{shard}: unexpected tensor {key!r} for an InternLM2 with {geo.num_layers} layers")
    layer, part = int(match.group(1)), match.group(2)
    prefix = f"model.layers.{layer}."
    if part == "attention.wqkv":
        _expect_shape(tensor, (geo.qkv_rows, hidden), key, shard, config)
        q, k, v = split_wqkv(tensor, geo)
        return [(prefix + f"self_attn.{n}_proj.weight", t) for n, t in zip("qkv", (q, k, v), strict=True)]
    shapes = {
        "attention.wo": (hidden, geo.num_heads * geo.head_dim),
        "feed_forward.w1": (inter, hidden),
        "feed_forward.w3": (inter, hidden),
        "feed_forward.w2": (hidden, inter),
        "attention_norm": (hidden,),
        "ffn_norm": (hidden,),
    }
    _expect_shape(tensor, shapes[part], key, shard, config)
    return [(prefix + _LAYER_TARGET[part] + ".weight", tensor)]


def _expected_source_keys(geo: Geometry, tied: bool) -> set[str]:
    keys = {"model.tok_embeddings.weight", "model.norm.weight"} | (set() if tied else {"output.weight"})
    for layer in range(geo.num_layers):
        keys |= {f"model.layers.{layer}.{part}.weight" for part in (*_LAYER_TARGET, "attention.wqkv")}
    return keys


def _convert_weights(src: Path, dst: Path, geo: Geometry, tied: bool, max_shard_bytes: int) -> dict[str, Any]:
    config = src / "config.json"
    shards, weight_map, index = _weight_shards(src)
    writer = _ShardWriter(dst, max_shard_bytes)
    seen: dict[str, Path] = {}
    dropped: list[str] = []
    dtypes: set[str] = set()
    for shard in shards:
        for key, tensor in iter_tensors(shard):
            if _DROPPABLE_KEY.fullmatch(key):
                dropped.append(key)
                continue
            if key in seen:
                raise ConversionError(f"{shard}: tensor {key!r} also appears in {seen[key]}")
            if weight_map is not None and weight_map.get(key) != shard.name:
                raise ConversionError(
                    f"{shard}: holds {key!r}, but {index} maps it to {weight_map.get(key, 'nothing')!r}"
                )
            seen[key] = shard
            dtypes.add(str(tensor.dtype).removeprefix("torch."))
            for name, out in _map_tensor(key, tensor, geo, shard, config):
                writer.add(name, out)
            del tensor
    if weight_map is not None:
        absent = sorted(k for k in weight_map if k not in seen and not _DROPPABLE_KEY.fullmatch(k))
        if absent:
            raise ConversionError(f"{index}: lists {absent[:5]} but the shards do not hold them")
    missing = sorted(_expected_source_keys(geo, tied) - set(seen))
    if missing:
        raise ConversionError(f"{src}: the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:5]}")
    files = writer.finish()
    return {
        "source_files": [s.name for s in shards],
        "source_bytes": sum(s.stat().st_size for s in shards),
        "tensors_in": len(seen),
        "dropped": dropped,
        "dtypes": sorted(dtypes),
        "files": files,
        "bytes": writer.total_bytes,
    }


def _generation_config(src: Path, llama: dict[str, Any]) -> dict[str, Any]:
    path = src / "generation_config.json"
    if path.is_file():
        data = read_json(path)
    else:
        data = {k: llama[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {k: v for k, v in data.items() if k not in ("transformers_version", "_from_model_config")}


def convert_base_into(
    src: Path,
    out: Path,
    *,
    max_shard_size: int | str,
    rope_scaling: str,
    tokenizer_check: str,
    tokenizer_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert the base into the existing folder ``out``; return its manifest entry (for one or all manifests)."""
    check_mode(tokenizer_check)
    config_path = src / "config.json"
    cfg = read_json(config_path)
    llama = llama_config(cfg, config_path, rope_scaling)
    geo = Geometry.from_config(llama, config_path)
    max_shard_bytes = _parse_size(max_shard_size)
    started = time.perf_counter()
    # Tokenizer first: seconds, and its check may fail; the weights take minutes at 7B.
    tokenizer = convert_tokenizer_into(
        src, out, check=tokenizer_check, vocab_size=geo.vocab_size, cache=tokenizer_cache, label="base"
    )
    weights = _convert_weights(src, out, geo, bool(llama["tie_word_embeddings"]), max_shard_bytes)
    write_json(out / "config.json", llama)
    write_json(out / "generation_config.json", _generation_config(src, llama))
    return {
        "source": str(src.resolve()),
        "source_config_sha256": sha256(config_path),
        "rope_scaling": {"source": cfg.get("rope_scaling"), "written": llama["rope_scaling"], "mode": rope_scaling},
        "weights": weights,
        "tokenizer": tokenizer,
        **copy_the_rest(src, out, {"config.json", "generation_config.json"}),
        "seconds": round(time.perf_counter() - started, 1),
    }


def convert_base(
    src: Path,
    dst: Path,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    rope_scaling: str = "keep",
    tokenizer_check: str = "strict",
    overwrite: bool = False,
) -> None:
    """Convert an InternLM2 model folder into a ``LlamaForCausalLM`` folder (atomically).

    ``src`` holds ``config.json`` and safetensors or ``pytorch_model*.bin`` weights (an index
    JSON, when present, is the list of shards), plus the tokenizer files. ``dst`` gets the
    Llama config, safetensors shards of at most ``max_shard_size``, ``generation_config.json``
    and a stock tokenizer (see ``convert.tokenizer``).

    ``rope_scaling="keep"`` writes InternLM2's rope scaling as transformers' Llama understands
    it (exact in transformers); ``"drop"`` writes none, which is exact in every engine
    (transformers, vLLM) for inputs up to ``max_position_embeddings`` tokens and wrong beyond.
    ``tokenizer_check``: ``"strict"`` fails on any probe text where the written tokenizer and
    SentencePiece disagree, ``"report"`` only records them in the manifest, ``"off"`` skips it.
    """
    write_conversion(
        dst,
        overwrite,
        "base",
        lambda out: convert_base_into(
            Path(src), out, max_shard_size=max_shard_size, rope_scaling=rope_scaling, tokenizer_check=tokenizer_check
        ),
    )
