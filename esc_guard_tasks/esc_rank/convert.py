"""Convert ESC-RANK (InternLM2-chat-7b + 14 fused-``wqkv`` LoRA adapters) to the plain Llama layout.

Why: InternLM2's modeling and tokenizer code exist only as hub *remote code* written for
transformers 4.x; we never run it. InternLM2 is architecturally a Llama (RMSNorm, SwiGLU,
GQA, rotary) whose only real difference is a fused ``wqkv`` projection, so after splitting
that matrix the checkpoint loads as ``LlamaForCausalLM`` in stock transformers and vLLM.
Each ESC-RANK adapter is LoRA on ``wqkv`` alone and is rewritten as LoRA on
``q_proj``/``k_proj``/``v_proj`` that applies exactly the same weight delta.

Facts this relies on (checked against InternLM's public sources: ``modeling_internlm2.py``
of the hub model, and ``tools/convert2llama.py`` in the InternLM repository):

* ``wqkv.weight`` rows are grouped per key/value head: for each of the
  ``num_key_value_heads`` groups, ``num_attention_heads // num_key_value_heads`` query heads,
  then one key head, then one value head, each ``head_dim`` rows. The remote code does
  ``rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + q_per_kv)``, takes
  ``[..., :q_per_kv, :]`` as queries and ``[..., -2, :]``/``[..., -1, :]`` as key/value.
  The split is a row permutation, so applying it to a LoRA ``B`` matrix (``lora_A`` shared)
  gives ``delta_q/k/v = scale * B_q/k/v @ A``, exactly the rows of the fused delta.
* Rotary: InternLM2 uses HF Llama's ``rotate_half`` convention (``cat(freqs, freqs)``), so
  q/k rows need no permutation (unlike Meta-checkpoint -> HF Llama conversions).
* ``rope_scaling {"type": "dynamic"}`` is the old HF dynamic-NTK formula
  ``base * (factor*L/max_pos - (factor-1)) ** (dim/(dim-2))`` for ``L > max_pos``, which
  transformers' Llama ``rope_type: "dynamic"`` computes identically for a forward pass of
  length ``L`` on a fresh model (and during cached decoding while the length only grows).
  They differ only in state: the remote code keeps the scaled frequencies after one long
  input, so a later input of length <= max_pos in the *same* model object is still scaled;
  transformers resets to the unscaled frequencies. vLLM's ``dynamic`` is different again:
  a fixed base computed for ``factor * max_pos`` at *every* length. ESC-RANK inputs are far
  below 32768 tokens, where InternLM2 applies no scaling at all; ``rope_scaling="drop"``
  therefore gives an exact config for every engine (see :func:`convert_base`).

Tokenizer: InternLM2Tokenizer is a SentencePiece BPE model used through remote code. We
write a ``tokenizer.json`` (``PreTrainedTokenizerFast``, no ``auto_map``) that mirrors it
(BPE with byte fallback, merges ordered by piece score, dummy prefix per text chunk between
special tokens, special tokens and ids from ``added_tokens_decoder``, BOS added), keep
``tokenizer.model`` and the chat template, and then *verify* the result: every conversion
encodes a probe set (EN/ZH, whitespace runs, emoji, ChatML with special tokens) both with
the written folder through ``AutoTokenizer`` and with SentencePiece itself the way the
remote tokenizer (transformers >= 4.34 semantics) does it, and fails on any difference.
Known, unprobed gap: text that literally contains a SentencePiece *user-defined* piece
(InternLM2's ``[UNUSED_TOKEN_n]``) is split there like a special token, so the text right
after it gets a dummy prefix SentencePiece would not add (only if the model adds one).

Weights are streamed one tensor at a time (safetensors) or one shard at a time (``.bin``),
and written in output shards of ``max_shard_size``, so a 7B model converts in a few GB of
RAM. Every public function writes into a temporary sibling folder and renames it into place.

Needs ``sentencepiece`` and ``protobuf`` for the tokenizer step (imported lazily).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "ESC_RANK_ADAPTERS",
    "MANIFEST",
    "ConversionError",
    "Geometry",
    "add_arguments",
    "convert_adapter",
    "convert_base",
    "convert_esc_rank",
    "convert_tokenizer",
    "main",
    "run",
    "split_wqkv",
]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "esc_guard_tasks.esc_rank.convert/1"
# The 14 folders of haidequanbu/ESC-RANK (7 dimensions x {zh, en}).
_DIMENSIONS = ("fluency", "diversity", "empathic", "suggestion", "human", "tech", "overall")
ESC_RANK_ADAPTERS = _DIMENSIONS + tuple(f"{d}_en" for d in _DIMENSIONS)

DEFAULT_MAX_SHARD_SIZE = 2 * 1024**3
_LORA_TARGETS = ["q_proj", "k_proj", "v_proj"]
_SAFE_META = {"format": "pt"}
# Files of a model/adapter folder that we rewrite (or drop) instead of copying.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf")
_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
# Source tokenizer files that are superseded by ours and must not be copied next to them.
_SUPERSEDED = (*_TOKENIZER_FILES, "added_tokens.json", "chat_template.jinja")

# InternLM2Config defaults (configuration_internlm2.py) for keys a config.json may omit.
_INTERNLM2_DEFAULTS: dict[str, Any] = {
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "bias": True,
    "rope_theta": 10000,
    "rope_scaling": None,
}

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
_ADAPTER_KEY = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.attention\.wqkv\.lora_([AB])\.weight")


class ConversionError(ValueError):
    """An input that is missing, malformed or not what ESC-RANK ships; the message names the file."""


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """The shape facts of an InternLM2 (or converted Llama) config that the conversion checks against."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def qkv_rows(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    @classmethod
    def from_config(cls, cfg: dict[str, Any], where: Path | str) -> Geometry:
        try:
            heads = int(cfg["num_attention_heads"])
            geo = cls(
                hidden_size=int(cfg["hidden_size"]),
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                vocab_size=int(cfg["vocab_size"]),
            )
        except KeyError as err:
            raise ConversionError(f"{where}: config has no {err.args[0]!r}") from None
        if geo.hidden_size % geo.num_heads or geo.num_heads % geo.num_kv_heads:
            raise ConversionError(
                f"{where}: hidden_size {geo.hidden_size}, num_attention_heads {geo.num_heads} and "
                f"num_key_value_heads {geo.num_kv_heads} do not divide evenly"
            )
        if "head_dim" in cfg and cfg["head_dim"] not in (None, geo.head_dim):
            raise ConversionError(f"{where}: head_dim {cfg['head_dim']} != hidden_size/num_attention_heads")
        return geo


def split_wqkv(fused: torch.Tensor, geo: Geometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split rows of a fused InternLM2 ``wqkv`` matrix (or of its LoRA ``B``) into contiguous q, k, v.

    Rows are ``(kv_group, [q_0 .. q_{n-1}, k, v], head_dim)``; the result puts the query heads
    in their global order ``kv_group * q_per_kv + i``, which is what Llama's GQA expects
    (query head ``h`` attends with key/value head ``h // q_per_kv``).
    """
    rest = fused.shape[1:]
    grouped = fused.reshape(geo.num_kv_heads, geo.q_per_kv + 2, geo.head_dim, *rest)
    q = grouped[:, : geo.q_per_kv].reshape(geo.num_heads * geo.head_dim, *rest).contiguous()
    k = grouped[:, geo.q_per_kv].reshape(geo.num_kv_heads * geo.head_dim, *rest).contiguous()
    v = grouped[:, geo.q_per_kv + 1].reshape(geo.num_kv_heads * geo.head_dim, *rest).contiguous()
    return q, k, v


# --------------------------------------------------------------------------- small helpers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_size(value: str | int) -> int:
    """``2147483648``, ``"2GB"``, ``"500MB"`` (powers of 1024) -> bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*", value.upper())
    if not match:
        raise ValueError(f"not a size: {value!r}")
    unit = (match.group(2) or "B").rstrip("B").rstrip("I")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(unit or " "))


@contextlib.contextmanager
def _atomic_dir(dst: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``dst``; rename it to ``dst`` only if the block succeeds.

    A killed or failed conversion never leaves a folder at ``dst`` that looks usable. If a
    concurrent run finished ``dst`` first (it has a manifest), its result is kept.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass overwrite=True / --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.chmod(0o755)
        if not dst.exists():
            os.replace(tmp, dst)
        elif overwrite:
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        elif not (dst / MANIFEST).is_file():
            raise ConversionError(f"{dst}: appeared during the conversion and is not a finished conversion")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temps(dst: Path, max_age_s: float = 6 * 3600) -> None:
    """Delete temp folders of killed conversions of ``dst`` (a 7B one is ~15 GB); recent ones may be live."""
    now = time.time()
    for stale in dst.parent.glob(f".{dst.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)


def _config_source(base_config: dict[str, Any] | str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    if isinstance(base_config, dict):
        return base_config, "<base_config>"
    path = Path(base_config)
    if path.is_dir():
        path = path / "config.json"
    return _read_json(path), str(path)


# --------------------------------------------------------------------------- base config


def _check_internlm2(cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """Reject what is not an InternLM2 decoder we can convert; fill InternLM2Config defaults."""
    architectures = cfg.get("architectures") or []
    # Early revisions of internlm2-chat-7b say model_type "internlm" with InternLM2ForCausalLM.
    if cfg.get("model_type") != "internlm2" and "InternLM2ForCausalLM" not in architectures:
        raise ConversionError(
            f"{where}: not an InternLM2 config (model_type {cfg.get('model_type')!r}, architectures {architectures})"
        )
    full = {**_INTERNLM2_DEFAULTS, **cfg}
    if full["bias"]:
        raise ConversionError(f"{where}: bias=true (InternLM2 with biases) is not supported; ESC-RANK's base has none")
    scaling = full["rope_scaling"]
    if scaling is not None:
        kind = scaling.get("type", scaling.get("rope_type")) if isinstance(scaling, dict) else None
        if kind not in ("dynamic", "linear") or not isinstance(scaling.get("factor"), (int, float)):
            raise ConversionError(f"{where}: unsupported rope_scaling {scaling!r} (InternLM2 knows dynamic/linear)")
    return full


def llama_config(cfg: dict[str, Any], where: Path, rope_scaling: str = "keep") -> dict[str, Any]:
    """The ``LlamaForCausalLM`` config.json equivalent to an InternLM2 config.

    Written in the transformers 4.x form (``rope_theta`` + ``rope_scaling`` with ``rope_type``),
    which transformers 4.x, 5.x (it folds them into ``rope_parameters``) and vLLM all read.
    """
    if rope_scaling not in ("keep", "drop"):
        raise ValueError(f"rope_scaling must be 'keep' or 'drop', got {rope_scaling!r}")
    full = _check_internlm2(cfg, where)
    geo = Geometry.from_config(full, where)
    scaling = full["rope_scaling"]
    if scaling is not None and rope_scaling == "keep":
        kind = scaling.get("type", scaling.get("rope_type"))
        scaling = {"rope_type": kind, "type": kind, "factor": float(scaling["factor"])}
    else:
        scaling = None
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": geo.vocab_size,
        "hidden_size": geo.hidden_size,
        "intermediate_size": geo.intermediate_size,
        "num_hidden_layers": geo.num_layers,
        "num_attention_heads": geo.num_heads,
        "num_key_value_heads": geo.num_kv_heads,
        "head_dim": geo.head_dim,
        "hidden_act": full["hidden_act"],
        "max_position_embeddings": full["max_position_embeddings"],
        "initializer_range": full["initializer_range"],
        "rms_norm_eps": full["rms_norm_eps"],
        "use_cache": full["use_cache"],
        "bos_token_id": full["bos_token_id"],
        "eos_token_id": full["eos_token_id"],
        "pad_token_id": full["pad_token_id"],
        "tie_word_embeddings": full["tie_word_embeddings"],
        "rope_theta": float(full["rope_theta"]),
        "rope_scaling": scaling,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


# --------------------------------------------------------------------------- base weights


def _weight_shards(src: Path) -> tuple[list[Path], dict[str, str] | None, Path | None]:
    """(shard files, weight_map or None, index file or None); safetensors preferred over .bin."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = src / index_name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
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


def _iter_tensors(shard: Path) -> Iterator[tuple[str, torch.Tensor]]:
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
        from safetensors.torch import save_file

        path = self.folder / f".part-{len(self.files):05d}.safetensors"
        save_file(self.pending, str(path), metadata=_SAFE_META)
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
        _write_json(
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
        for key, tensor in _iter_tensors(shard):
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
        data = _read_json(path)
    else:
        data = {k: llama[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {k: v for k, v in data.items() if k not in ("transformers_version", "_from_model_config")}


def _copy_extras(src: Path, dst: Path, skip: set[str]) -> tuple[list[str], list[str]]:
    """Copy plain files not handled elsewhere; drop remote code (``*.py``) and weight files."""
    copied, dropped = [], []
    for path in sorted(src.iterdir()):
        if not path.is_file() or path.name in skip or path.name.startswith("."):
            continue
        if path.suffix == ".py" or path.name.endswith(_WEIGHT_SUFFIXES) or path.name.endswith(".index.json"):
            dropped.append(path.name)
            continue
        shutil.copyfile(path, dst / path.name)
        copied.append(path.name)
    return copied, dropped


def _convert_base_into(
    src: Path,
    out: Path,
    *,
    max_shard_size: int | str,
    rope_scaling: str,
    tokenizer_check: str,
    tokenizer_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if tokenizer_check not in _TOKENIZER_CHECKS:
        raise ValueError(f"tokenizer_check must be one of {_TOKENIZER_CHECKS}, got {tokenizer_check!r}")
    config_path = src / "config.json"
    cfg = _read_json(config_path)
    llama = llama_config(cfg, config_path, rope_scaling)
    geo = Geometry.from_config(llama, config_path)
    max_shard_bytes = _parse_size(max_shard_size)
    started = time.perf_counter()
    # Tokenizer first: seconds, and its check may fail; the weights take minutes at 7B.
    tokenizer = _convert_tokenizer_into(
        src, out, check=tokenizer_check, vocab_size=geo.vocab_size, cache=tokenizer_cache, label="base"
    )
    weights = _convert_weights(src, out, geo, bool(llama["tie_word_embeddings"]), max_shard_bytes)
    _write_json(out / "config.json", llama)
    _write_json(out / "generation_config.json", _generation_config(src, llama))
    skip = {"config.json", "generation_config.json", *_SUPERSEDED}
    copied, dropped = _copy_extras(src, out, skip)
    return {
        "source": str(src.resolve()),
        "source_config_sha256": _sha256(config_path),
        "rope_scaling": {"source": cfg.get("rope_scaling"), "written": llama["rope_scaling"], "mode": rope_scaling},
        "weights": weights,
        "tokenizer": tokenizer,
        "copied": copied,
        "dropped_files": dropped,
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
    and a stock tokenizer (see the module docstring).

    ``rope_scaling="keep"`` writes InternLM2's rope scaling as transformers' Llama understands
    it (exact in transformers); ``"drop"`` writes none, which is exact in every engine
    (transformers, vLLM) for inputs up to ``max_position_embeddings`` tokens and wrong beyond.
    ``tokenizer_check``: ``"strict"`` fails on any probe text where the written tokenizer and
    SentencePiece disagree, ``"report"`` only records them in the manifest, ``"off"`` skips it.
    """
    src = Path(src)
    with _atomic_dir(Path(dst), overwrite) as out:
        report = _convert_base_into(
            src, out, max_shard_size=max_shard_size, rope_scaling=rope_scaling, tokenizer_check=tokenizer_check
        )
        _write_json(out / MANIFEST, _manifest({"base": report}))


# --------------------------------------------------------------------------- adapters


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


def _load_adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001
            raise ConversionError(f"{path}: cannot read safetensors ({err})") from None
    return dict(_iter_tensors(path))


def _convert_adapter_into(
    src: Path,
    out: Path,
    base_config: dict[str, Any] | str | os.PathLike[str],
    converted_base: Path,
    tokenizer_cache: dict[str, Any] | None = None,
    tokenizer_check: str = "strict",
) -> dict[str, Any]:
    config_path = src / "adapter_config.json"
    adapter_cfg = _read_json(config_path)
    _check_adapter_config(adapter_cfg, config_path)
    cfg, cfg_where = _config_source(base_config)
    geo = Geometry.from_config(cfg, cfg_where)
    rank = adapter_cfg["r"]
    weights = _adapter_weights(src)
    tensors = _load_adapter_tensors(weights)
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
    from safetensors.torch import save_file

    save_file(out_tensors, str(out / "adapter_model.safetensors"), metadata=_SAFE_META)
    new_cfg = dict(adapter_cfg)
    new_cfg["target_modules"] = list(_LORA_TARGETS)
    base_path = str(Path(converted_base).resolve())
    new_cfg["base_model_name_or_path"] = base_path
    _write_json(out / "adapter_config.json", new_cfg)
    tokenizer = None
    if (src / "tokenizer.model").is_file():
        tokenizer = _convert_tokenizer_into(
            src, out, check=tokenizer_check, vocab_size=geo.vocab_size, cache=tokenizer_cache, label=src.name
        )
    skip = {"adapter_config.json", *_SUPERSEDED}
    copied, dropped = _copy_extras(src, out, skip)
    return {
        "source": str(src.resolve()),
        "source_weights": weights.name,
        "source_weights_sha256": _sha256(weights),
        "r": rank,
        "lora_alpha": adapter_cfg.get("lora_alpha"),
        "layers": len(layers),
        "tensors_out": len(out_tensors),
        "base_model_name_or_path": {
            "source": adapter_cfg.get("base_model_name_or_path"),
            "written": base_path,
        },
        "tokenizer": tokenizer,
        "copied": copied,
        "dropped_files": dropped,
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
    src = Path(src)
    with _atomic_dir(Path(dst), overwrite) as out:
        report = _convert_adapter_into(src, out, base_config, Path(converted_base), None, tokenizer_check)
        _write_json(out / MANIFEST, _manifest({"adapter": report}))


# --------------------------------------------------------------------------- whole ESC-RANK


def _adapter_dirs(src_adapters: Path) -> list[Path]:
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


def _manifest(body: dict[str, Any]) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for dist in ("esc-guard-tasks", "torch", "transformers", "safetensors", "tokenizers", "sentencepiece"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "format": MANIFEST_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions,
        **body,
    }


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
    adapters = _adapter_dirs(src_adapters)
    final_base = dst.resolve() / "base"
    tokenizers: dict[str, Any] = {}  # identical tokenizer files (base and 14 adapters) are converted once
    with _atomic_dir(dst, overwrite) as out:
        (out / "base").mkdir()
        base_report = _convert_base_into(
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
            adapter_reports[folder.name] = _convert_adapter_into(
                folder, target, out / "base", final_base, tokenizers, tokenizer_check
            )
        names = [f.name for f in adapters]
        _write_json(
            out / MANIFEST,
            _manifest(
                {
                    "sources": {"base": str(src_base.resolve()), "adapters": str(src_adapters.resolve())},
                    "base": {"path": "base", **base_report},
                    "adapters": {n: {"path": f"adapters/{n}", **r} for n, r in adapter_reports.items()},
                    "esc_rank_adapters_missing": [n for n in ESC_RANK_ADAPTERS if n not in names],
                    "extra_adapters": [n for n in names if n not in ESC_RANK_ADAPTERS],
                }
            ),
        )
    return dst


# --------------------------------------------------------------------------- tokenizer


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


_PROBES = (
    "Hello world! How are you today?",
    "  two leading spaces, trailing two  ",
    "multiple    spaces\tand\ttabs\nnew line\n\nblank line",
    "我最近压力很大，晚上总是睡不着。你能帮帮我吗？",
    "**AI助手**：Hello, I'm your personal assistant.\n\n**用户**Hi there, I really need someone to talk to.",
    "AI \u200b\u200bassistant\u2019s fluecy score: 4",
    "emoji 😀🎉 and symbols ©®™ ½ ① Ⅻ ﬁ",
    "numbers 1234567890 3.14159 -42 1e-5 100%",
    "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ and café naïve",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<s>literal bos</s> and <unk>",
    "line\r\nwindows\u3000ideographic space",
    " ",
    "\n",
    "",
)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [s for item in items for s in _strings(item)]


def _probe_texts() -> list[str]:
    """Built-in probes plus ESC-Eval's real judge strings (rubrics, InternLM2 system prompt, ChatML prompt)."""
    texts = list(_PROBES)
    try:
        from importlib.resources import files

        prompts = json.loads(files("esc_guard_tasks.esc_eval").joinpath("prompts.json").read_text("utf-8"))
        judge = prompts["judge"]
        meta = prompts["internlm2_meta_instruction"]
        rubrics = [*judge["rubric_prompts"]["en"], *judge["rubric_prompts"]["zh"]]
        closing = judge["closing_template"].format(dimension=judge["dimension_strings"][0])
        texts += [*rubrics, meta, *_strings(prompts["role_player_system_prompt"]), *_strings(prompts["greeting"])]
        user = rubrics[0] + judge["dialogue_header"] + _PROBES[4] + "\n" + closing
        texts.append(
            f"<|im_start|>system\n{meta}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        )
    except (ImportError, OSError, KeyError, TypeError, ValueError, IndexError):
        pass  # the built-in probes still run
    return texts


def _load_sp_proto(path: Path) -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as err:
        raise ConversionError(
            f"{path}: converting the tokenizer needs the 'sentencepiece' and 'protobuf' packages ({err}); "
            "pip install sentencepiece protobuf"
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ConversionError(f"{path}: not a SentencePiece model ({err})") from None
    return proto


def _added_tokens(src: Path, tok_cfg: dict[str, Any], proto: Any) -> dict[int, dict[str, Any]]:
    """id -> AddedToken fields: SentencePiece control/unk pieces, then ``added_tokens_decoder``."""
    added: dict[int, dict[str, Any]] = {}
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    for index, piece in enumerate(proto.pieces):
        if piece.type in (2, 3):  # UNKNOWN, CONTROL
            added[index] = {"content": piece.piece, **flags, "special": True}
    for key, value in (tok_cfg.get("added_tokens_decoder") or {}).items():
        try:
            index = int(key)
            entry = {**flags, "special": True, **{k: v for k, v in value.items() if k != "__type"}}
        except (TypeError, ValueError, AttributeError):
            raise ConversionError(f"{src / 'tokenizer_config.json'}: bad added_tokens_decoder entry {key!r}") from None
        added[index] = entry
    return added


def _build_tokenizer_json(
    proto: Any,
    added: dict[int, dict[str, Any]],
    add_bos: bool,
    add_eos: bool,
    bos: str | None,
    eos: str | None,
    where: Path,
) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != 2:
        raise ConversionError(f"{where}: SentencePiece model_type {spec.model_type}; InternLM2's is BPE (2)")
    if spec.treat_whitespace_as_suffix:
        raise ConversionError(f"{where}: treat_whitespace_as_suffix is not supported")
    vocab: dict[str, int] = {}
    renamed: set[int] = set()
    for index, piece in enumerate(proto.pieces):
        name = piece.piece
        if index in added and added[index]["content"] != name:
            name = added[index]["content"]
            renamed.add(index)
        if name in vocab:
            raise ConversionError(f"{where}: token {name!r} appears twice (ids {vocab[name]} and {index})")
        vocab[name] = index
    # Merges: every split of a NORMAL piece into two NORMAL pieces, highest piece score first
    # (SentencePiece BPE merges the adjacent pair whose concatenation scores highest).
    normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == 1 and i not in renamed}
    ranked = []
    for piece, index in normal.items():
        score = proto.pieces[index].score
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, index, normal[left], normal[right], left, right))
    ranked.sort()
    unk = proto.pieces[spec.unk_id].piece if 0 <= spec.unk_id < len(proto.pieces) else None
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=[(r[4], r[5]) for r in ranked],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
        )
    )
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex("^ | $"), "")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    decode_steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(decode_steps)
    # Every added token is matched on raw text before normalization, like the remote tokenizer
    # (which splits on them and hands each chunk to SentencePiece, dummy prefix included).
    in_order = sorted(added.items())

    def as_added(e: dict[str, Any]) -> AddedToken:
        return AddedToken(
            e["content"],
            single_word=e["single_word"],
            lstrip=e["lstrip"],
            rstrip=e["rstrip"],
            normalized=False,
            special=e["special"],
        )

    tok.add_special_tokens([as_added(e) for _, e in in_order if e["special"]])
    tok.add_tokens([as_added(e) for _, e in in_order if not e["special"]])
    # SentencePiece matches user-defined pieces atomically; so do non-special added tokens.
    tok.add_tokens(
        [
            AddedToken(p.piece, normalized=False, special=False)
            for i, p in enumerate(proto.pieces)
            if p.type == 4 and i not in added
        ]
    )
    for index, entry in in_order:
        if tok.token_to_id(entry["content"]) != index:
            raise ConversionError(
                f"{where}: added token {entry['content']!r} must have id {index} but would get "
                f"{tok.token_to_id(entry['content'])} (ids beyond the SentencePiece vocab must be contiguous)"
            )
    specials = []
    single, pair = "$A:0", "$A:0 $B:1"
    if add_bos:
        single, pair = f"{bos}:0 {single}", f"{bos}:0 $A:0 {bos}:1 $B:1"
        specials.append((bos, tok.token_to_id(bos)))
    if add_eos:
        single = f"{single} {eos}:0"
        pair = pair.replace("$A:0", f"$A:0 {eos}:0").replace("$B:1", f"$B:1 {eos}:1")
        specials.append((eos, tok.token_to_id(eos)))
    if any(i is None for _, i in specials):
        raise ConversionError(f"{where}: bos/eos token {specials} not in the vocabulary")
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    return tok


def _reference_encode(sp: Any, text: str, added: dict[str, int], bos_id: int | None) -> list[int]:
    """What the remote InternLM2Tokenizer returns: split on added tokens, SentencePiece per chunk, BOS."""
    ids = [] if bos_id is None else [bos_id]
    if added:
        pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
        pos = 0
        for match in pattern.finditer(text):
            if match.start() > pos:
                ids += sp.encode(text[pos : match.start()])
            ids.append(added[match.group()])
            pos = match.end()
        text = text[pos:]
    if text:
        ids += sp.encode(text)
    return ids


def _verify_tokenizer(out: Path, model: Path, added: dict[int, dict[str, Any]], bos_id: int | None) -> dict[str, Any]:
    """Encode/decode the probes with the written folder (stock AutoTokenizer) and with SentencePiece."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(model))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    by_content = {e["content"]: i for i, e in added.items()}
    specials = set(added)
    mismatches = []
    probes = _probe_texts()
    for text in probes:
        want = _reference_encode(sp, text, by_content, bos_id)
        got = tokenizer(text)["input_ids"]
        if got != want:
            mismatches.append({"text": text, "sentencepiece": want, "converted": got})
            continue
        plain = [i for i in want if i not in specials]
        if not any(t in text for t in by_content) and tokenizer.decode(plain) != sp.decode(plain):
            mismatches.append(
                {"text": text, "decode_sentencepiece": sp.decode(plain), "decode_converted": tokenizer.decode(plain)}
            )
    return {"probes": len(probes), "mismatches": mismatches}


_TOKENIZER_CHECKS = ("strict", "report", "off")
_TOKENIZER_SOURCES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_TOKENIZER_OUTPUTS = (*_TOKENIZER_FILES, "chat_template.jinja")


def _convert_tokenizer_into(
    src: Path,
    out: Path,
    *,
    check: str,
    vocab_size: int | None,
    cache: dict[str, Any] | None = None,
    label: str = "",
) -> dict[str, Any]:
    model = src / "tokenizer.model"
    if not model.is_file():
        raise ConversionError(f"{model}: missing (InternLM2's SentencePiece tokenizer)")
    cache_key = "/".join(_sha256(src / n) if (src / n).is_file() else "-" for n in _TOKENIZER_SOURCES)
    if cache is not None and cache_key in cache:
        folder, report, first = cache[cache_key]
        for name in _TOKENIZER_OUTPUTS:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, out / name)
        return {**report, "same_files_as": first}
    cfg_path = src / "tokenizer_config.json"
    tok_cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
    map_path = src / "special_tokens_map.json"
    special_map = _read_json(map_path) if map_path.is_file() else {}
    proto = _load_sp_proto(model)

    def special(name: str, default: str | None) -> str | None:
        return _token_content(tok_cfg.get(name, special_map.get(name, default)))

    bos, eos = special("bos_token", "<s>"), special("eos_token", "</s>")
    unk, pad = special("unk_token", "<unk>"), special("pad_token", "</s>")
    add_bos, add_eos = bool(tok_cfg.get("add_bos_token", True)), bool(tok_cfg.get("add_eos_token", False))
    added = _added_tokens(src, tok_cfg, proto)
    tok = _build_tokenizer_json(proto, added, add_bos, add_eos, bos, eos, model)
    size = tok.get_vocab_size(with_added_tokens=True)
    if vocab_size is not None and size > vocab_size:
        raise ConversionError(f"{model}: {size} tokens but the model's vocab_size is {vocab_size}")
    tok.save(str(out / "tokenizer.json"))
    shutil.copyfile(model, out / "tokenizer.model")

    extra = [
        _token_content(t)
        for t in tok_cfg.get("additional_special_tokens") or special_map.get("additional_special_tokens") or []
    ]
    new_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": pad,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": tok_cfg.get("clean_up_tokenization_spaces", False),
        "added_tokens_decoder": {str(i): e for i, e in sorted(added.items())},
        "additional_special_tokens": extra,
    }
    for name in ("model_max_length", "padding_side", "chat_template"):
        if name in tok_cfg:
            new_cfg[name] = tok_cfg[name]
    _write_json(out / "tokenizer_config.json", new_cfg)
    _write_json(
        out / "special_tokens_map.json",
        {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad, "additional_special_tokens": extra},
    )
    if (src / "chat_template.jinja").is_file():
        shutil.copyfile(src / "chat_template.jinja", out / "chat_template.jinja")
    norm = proto.normalizer_spec
    report: dict[str, Any] = {
        "source_sha256": _sha256(model),
        "pieces": len(proto.pieces),
        "vocab_with_added": size,
        "add_dummy_prefix": norm.add_dummy_prefix,
        "remove_extra_whitespaces": norm.remove_extra_whitespaces,
        "normalization_rule": norm.name,
        "byte_fallback": proto.trainer_spec.byte_fallback,
        "special_tokens": {e["content"]: i for i, e in sorted(added.items())},
        "chat_template": "chat_template" in tok_cfg or (src / "chat_template.jinja").is_file(),
        "verified": None,
    }
    if check not in _TOKENIZER_CHECKS:
        raise ValueError(f"tokenizer_check must be one of {_TOKENIZER_CHECKS}, got {check!r}")
    if check != "off":
        result = _verify_tokenizer(out, model, added, tok.token_to_id(bos) if add_bos else None)
        if result["mismatches"]:
            first = result["mismatches"][0]
            message = (
                f"{model}: the converted tokenizer differs from SentencePiece on {len(result['mismatches'])} of "
                f"{result['probes']} probe texts, e.g. {json.dumps(first, ensure_ascii=False)[:600]}"
            )
            if check == "strict":
                raise ConversionError(message)
            print(f"warning: {message}", file=sys.stderr)
        report["verified"] = result
    if cache is not None:
        cache[cache_key] = (out, report, label)
    return report


def convert_tokenizer(src: Path, dst: Path, *, check: str = "strict", overwrite: bool = False) -> dict[str, Any]:
    """Write only the stock-transformers tokenizer of an InternLM2 folder into ``dst``; return the report."""
    with _atomic_dir(Path(dst), overwrite) as out:
        return _convert_tokenizer_into(Path(src), out, check=check, vocab_size=None)


# --------------------------------------------------------------------------- command line


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
        choices=_TOKENIZER_CHECKS,
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


if __name__ == "__main__":
    sys.exit(main())
