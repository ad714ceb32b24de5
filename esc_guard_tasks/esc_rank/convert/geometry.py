"""InternLM2's shape facts, the fused ``wqkv`` split, and the equivalent Llama config.

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
  therefore gives an exact config for every engine (see :func:`~.base.convert_base`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esc_guard_tasks.esc_rank.convert.files import ConversionError, read_json

if TYPE_CHECKING:
    import torch


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


def config_source(base_config: dict[str, Any] | str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """(config, where it came from for error messages) from a dict, a config.json or a model folder."""
    if isinstance(base_config, dict):
        return base_config, "<base_config>"
    path = Path(base_config)
    if path.is_dir():
        path = path / "config.json"
    return read_json(path), str(path)


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
