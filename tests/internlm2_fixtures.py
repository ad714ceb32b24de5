"""Tiny synthetic InternLM2 checkpoints and ESC-RANK-style adapters, saved the way the real ones are.

The real ``internlm/internlm2-chat-7b`` and ``haidequanbu/ESC-RANK`` cannot be downloaded here,
so these builders reproduce their *format* at toy size: the real config fields
(``model_type internlm2``, ``auto_map`` to remote code, dynamic rope scaling, ``bias: false``),
the real state-dict key names, the fused grouped-query ``wqkv`` layout, sharded weights with an
index JSON (safetensors or ``pytorch_model-*.bin``), a SentencePiece BPE tokenizer with byte
fallback whose last six pieces are the ``[UNUSED_TOKEN_n]`` slots that ``added_tokens_decoder``
renames to ``<|im_start|>`` & co (as in InternLM2), and PEFT adapter folders with the real
``adapter_config.json`` fields and ``base_model.model.model.layers.{i}.attention.wqkv.lora_{A,B}``
keys. Remote-code ``.py`` files are present but raise if anything ever imports them.

Plain functions only; no pytest here.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from judge_fixtures import INTERNLM2_CHAT_TEMPLATE, lora_adapter_config
from tiny_models import CORPUS as TINY_CORPUS

__all__ = [
    "ADAPTER_CONFIG",
    "CORPUS",
    "INTERNLM2_CHAT_7B_CONFIG",
    "SPECIAL_TOKENS",
    "TinySpec",
    "build_adapter",
    "build_internlm2",
    "build_sp_model",
    "internlm2_config",
    "write_tokenizer",
]

# (content, offset from the end of the SentencePiece vocab) as in internlm2-chat-7b (92538..92543 of 92544).
SPECIAL_TOKENS = [
    ("<|plugin|>", 6),
    ("<|interpreter|>", 5),
    ("<|action_end|>", 4),
    ("<|action_start|>", 3),
    ("<|im_end|>", 2),
    ("<|im_start|>", 1),
]
CHAT_TEMPLATE = INTERNLM2_CHAT_TEMPLATE  # the tokenizer_config.json chat template of internlm2-chat-7b
CORPUS = [
    *TINY_CORPUS[:5],  # the tiny chat model's first English sentences
    "Based on the rules, give your fluecy score (The number only) to the Dialogue.",
    "Dialogue between user and AI assistant: ",
    "**AI助手**：Hello, I'm your personal assistant. You can confide in me about any worries!",
    "**用户**Hi there, I really need someone to talk to about something that's been bothering me.",
    "我最近压力很大，晚上总是睡不着。",
    "听起来你最近真的很辛苦，愿意多说一点吗？",
    "我和好朋友吵架了，心里很难过。",
    "失业不代表你没有价值，这段时间你是怎么度过的？",
    "    indented code line\n\tand a tab\n\nand blank lines   with   runs of spaces",
    "Scores: 0 1 2 3 4 5, 12345, 3.14",
]
# What PEFT wrote for the ESC-RANK adapters (LoRA r=8, alpha=16 on wqkv; base = a local path).
ADAPTER_CONFIG: dict[str, Any] = lora_adapter_config(
    base_model_name_or_path="/mnt/workspace/models/internlm2-chat-7b",
    loftq_config={},
    lora_alpha=16,
    lora_dropout=0.0,
    megatron_config=None,
    megatron_core="megatron.core",
    modules_to_save=None,
    r=8,
    target_modules=["wqkv"],
    task_type="CAUSAL_LM",
    use_dora=False,
    use_rslora=False,
)
# config.json of internlm/internlm2-chat-7b as published (values from the model card's config; the
# earliest revisions said model_type "internlm" and rope_scaling factor 1.0 — both are accepted).
INTERNLM2_CHAT_7B_CONFIG: dict[str, Any] = {
    "architectures": ["InternLM2ForCausalLM"],
    "attn_implementation": "eager",
    "auto_map": {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    },
    "bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "internlm2",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pad_token_id": 2,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "rope_theta": 1000000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.0",
    "use_cache": True,
    "vocab_size": 92544,
}
_REMOTE_CODE = 'raise RuntimeError("remote code must never be imported by the converter or its outputs")\n'


@dataclass
class TinySpec:
    """Toy geometry with the real structure: GQA with 2 query heads per key/value head."""

    hidden_size: int = 64
    intermediate_size: int = 96
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 32
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default_factory=lambda: {"type": "dynamic", "factor": 2.0})
    rms_norm_eps: float = 1e-5
    sp_vocab: int = 420
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = False
    normalization: str = "identity"


def build_sp_model(path: Path, spec: TinySpec) -> int:
    """Train a small SentencePiece BPE (byte fallback) and append six USER_DEFINED ``[UNUSED_TOKEN_n]`` pieces.

    Returns the number of pieces (= the model's vocab_size). Deterministic for a given spec.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_writer=buffer,
        vocab_size=spec.sp_vocab,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.9995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name=spec.normalization,
        add_dummy_prefix=spec.add_dummy_prefix,
        remove_extra_whitespaces=spec.remove_extra_whitespaces,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    for number in range(141, 147):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"[UNUSED_TOKEN_{number}]", 0.0, piece.USER_DEFINED
    path.write_bytes(proto.SerializeToString())
    return len(proto.pieces)


def internlm2_config(spec: TinySpec, vocab_size: int) -> dict[str, Any]:
    """config.json as internlm2-chat-7b ships it, at toy size."""
    return INTERNLM2_CHAT_7B_CONFIG | {
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_scaling": spec.rope_scaling,
        "rope_theta": spec.rope_theta,
        "torch_dtype": "float32",
        "vocab_size": vocab_size,
    }


def write_tokenizer(folder: Path, spec: TinySpec) -> int:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json as InternLM2 ships them; returns vocab size."""
    vocab_size = build_sp_model(folder / "tokenizer.model", spec)
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    decoder = {"0": {"content": "<unk>", **flags}, "1": {"content": "<s>", **flags}, "2": {"content": "</s>", **flags}}
    for content, back in SPECIAL_TOKENS:
        decoder[str(vocab_size - back)] = {"content": content, **flags}
    extra = [content for content, _ in reversed(SPECIAL_TOKENS)]
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra,
        "auto_map": {
            "AutoTokenizer": [
                "tokenization_internlm2.InternLM2Tokenizer",
                "tokenization_internlm2_fast.InternLM2TokenizerFast",
            ]
        },
        "bos_token": "<s>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "decode_with_prefix_space": False,
        "eos_token": "</s>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "</s>",
        "sp_model_kwargs": None,
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    special_map = {
        "additional_special_tokens": extra,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    for name in ("tokenization_internlm2.py", "tokenization_internlm2_fast.py"):
        (folder / name).write_text(_REMOTE_CODE)
    return vocab_size


def _random_state(spec: TinySpec, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """InternLM2 state dict with the real key names; scales chosen so every block matters in the logits."""
    gen = torch.Generator().manual_seed(seed)
    h, inter = spec.hidden_size, spec.intermediate_size
    head_dim = h // spec.num_attention_heads
    qkv_rows = (spec.num_attention_heads + 2 * spec.num_key_value_heads) * head_dim

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    state = {"model.tok_embeddings.weight": rand(vocab_size, h, scale=1.0)}
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        state[p + "attention.wqkv.weight"] = rand(qkv_rows, h, scale=0.5 / h**0.5 * 4)
        state[p + "attention.wo.weight"] = rand(h, h, scale=1.0 / h**0.5)
        state[p + "feed_forward.w1.weight"] = rand(inter, h, scale=1.0 / h**0.5)
        state[p + "feed_forward.w3.weight"] = rand(inter, h, scale=1.0 / h**0.5)
        state[p + "feed_forward.w2.weight"] = rand(h, inter, scale=1.0 / inter**0.5)
        state[p + "attention_norm.weight"] = 1.0 + rand(h, scale=0.1)
        state[p + "ffn_norm.weight"] = 1.0 + rand(h, scale=0.1)
    state["model.norm.weight"] = 1.0 + rand(h, scale=0.1)
    state["output.weight"] = rand(vocab_size, h, scale=1.0 / h**0.5)
    return state


def _save_shards(folder: Path, state: dict[str, torch.Tensor], fmt: str, shards: int) -> None:
    """Split keys over ``shards`` files in the HF naming scheme, with the matching index JSON."""
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for number in range(shards):
        part = {k: state[k].contiguous() for k in keys[number * per : (number + 1) * per]}
        if fmt == "safetensors":
            from safetensors.torch import save_file

            name = f"model-{number + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, str(folder / name), metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{number + 1:05d}-of-{shards:05d}.bin"
            torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def build_internlm2(
    folder: Path, spec: TinySpec | None = None, *, fmt: str = "safetensors", shards: int = 2, seed: int = 0
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Write a tiny internlm2-chat-7b look-alike into ``folder``; return (config, fused state dict)."""
    spec = spec or TinySpec()
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(folder, spec)
    config = internlm2_config(spec, vocab_size)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    generation = {
        "bos_token_id": 1,
        "eos_token_id": [2, vocab_size - 2],
        "pad_token_id": 2,
        "transformers_version": "4.41.0",
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    for name in ("configuration_internlm2.py", "modeling_internlm2.py"):
        (folder / name).write_text(_REMOTE_CODE)
    (folder / "README.md").write_text("tiny synthetic InternLM2 for tests\n")
    state = _random_state(spec, vocab_size, seed)
    _save_shards(folder, state, fmt, shards)
    return config, state


def build_adapter(
    folder: Path,
    base: Path,
    config: dict[str, Any],
    *,
    seed: int,
    r: int = 8,
    lora_alpha: int = 16,
    target_modules: list[str] | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Write an ESC-RANK-style adapter folder; return ``{layer: (lora_A, lora_B)}`` (B non-zero)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    hidden = config["hidden_size"]
    head_dim = hidden // config["num_attention_heads"]
    rows = (config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * head_dim
    weights, tensors = {}, {}
    for layer in range(config["num_hidden_layers"]):
        a = torch.randn(r, hidden, generator=gen) / hidden**0.5
        b = torch.randn(rows, r, generator=gen) * 0.3
        weights[layer] = (a, b)
        prefix = f"base_model.model.model.layers.{layer}.attention.wqkv."
        tensors[prefix + "lora_A.weight"], tensors[prefix + "lora_B.weight"] = a, b
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config = dict(ADAPTER_CONFIG, r=r, lora_alpha=lora_alpha, target_modules=target_modules or ["wqkv"])
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenization_internlm2.py"):
        (folder / name).write_bytes((base / name).read_bytes())
    (folder / "all_results.json").write_text(json.dumps({"epoch": 3.0, "eval_loss": 0.42}, indent=2))
    return weights
