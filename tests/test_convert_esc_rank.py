"""ESC-RANK conversion (InternLM2 + fused-wqkv LoRA -> Llama + q/k/v LoRA), proved on tiny synthetic checkpoints.

The proof is numerical: a reference forward pass written here in plain torch, straight from
InternLM2's remote modeling code (fused ``wqkv`` split per KV group, rotate_half rotary with
InternLM2's dynamic NTK rule, GQA, SwiGLU, RMSNorm), runs on the *unconverted* tensors and must
give the same logits as stock ``LlamaForCausalLM`` / ``PeftModel`` loading the *converted*
folders. The reference shares no code with the converter.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from internlm2_fixtures import (
    CORPUS,
    INTERNLM2_CHAT_7B_CONFIG,
    SPECIAL_TOKENS,
    TinySpec,
    build_adapter,
    build_internlm2,
    write_tokenizer,
)

from esc_guard_tasks.esc_rank.convert import (
    ConversionError,
    Geometry,
    convert_adapter,
    convert_base,
    convert_esc_rank,
    convert_tokenizer,
    llama_config,
    main,
    split_wqkv,
)

# float32 forward vs the float64 reference: rounding only (observed <= 1e-5 on logits of size ~4).
FP32_ATOL = 2e-5
# float64 forward: the reference keeps the remote code's float32 islands, so this is bit-identical (observed 0.0).
FP64_ATOL = 1e-12
SEQ = 24  # < max_position_embeddings (32) of the tiny config


# --------------------------------------------------------------------------- reference (InternLM2 semantics)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """InternLM2RMSNorm: normalise in float32, scale in the input dtype."""
    x32 = x.to(torch.float32)
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def internlm2_inv_freq(config: dict, seq_len: int, scaling: bool = True) -> torch.Tensor:
    """InternLM2DynamicNTKScalingRotaryEmbedding: rescale the base only once seq_len > max_position_embeddings."""
    dim = config["hidden_size"] // config["num_attention_heads"]
    base = float(config["rope_theta"])
    rope = config.get("rope_scaling")
    max_pos = config["max_position_embeddings"]
    if scaling and rope and rope["type"] == "dynamic" and seq_len > max_pos:
        factor = rope["factor"]
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))  # float32, as in the remote code


def reference_logits(
    config: dict,
    state: dict[str, torch.Tensor],
    ids: torch.Tensor,
    lora: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    lora_scale: float = 2.0,
    scaling: bool = True,
    naive_split: bool = False,
) -> torch.Tensor:
    """Logits of one sequence, computed the way InternLM2's modeling code does.

    Mirrors the remote code's float32 islands (rotary cos/sin, RMSNorm, softmax); the rest runs in float64.

    ``lora`` adds ``lora_scale * B @ A`` to each layer's fused ``wqkv``. ``naive_split`` is a
    deliberately wrong layout (contiguous q|k|v rows), used to show the test is sensitive to it.
    """
    st = {k: v.double() for k, v in state.items()}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    hidden, eps = config["hidden_size"], config["rms_norm_eps"]
    dim, groups = hidden // heads, heads // kv_heads
    seq = ids.shape[0]
    freqs = torch.einsum("i,j->ij", torch.arange(seq, dtype=torch.float32), internlm2_inv_freq(config, seq, scaling))
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().double(), emb.sin().double()
    causal = torch.full((seq, seq), float("-inf"), dtype=torch.float64).triu(1)
    x = st["model.tok_embeddings.weight"][ids]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = _rms_norm(x, st[p + "attention_norm.weight"], eps)
        wqkv = st[p + "attention.wqkv.weight"]
        if lora is not None:
            a, b = lora[layer]
            wqkv = wqkv + lora_scale * b.double() @ a.double()
        qkv = h @ wqkv.T
        if naive_split:
            q = qkv[:, : heads * dim].reshape(seq, heads, dim)
            k = qkv[:, heads * dim : (heads + kv_heads) * dim].reshape(seq, kv_heads, dim)
            v = qkv[:, (heads + kv_heads) * dim :].reshape(seq, kv_heads, dim)
        else:  # rearrange(qkv, "q (h gs d) -> q h gs d", gs=2 + groups)
            grouped = qkv.reshape(seq, kv_heads, groups + 2, dim)
            q = grouped[:, :, :groups, :].reshape(seq, heads, dim)  # "(h gs)" query heads
            k, v = grouped[:, :, -2, :], grouped[:, :, -1, :]
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)  # repeat_kv
        scores = q @ k.transpose(1, 2) / math.sqrt(dim) + causal
        attn = torch.softmax(scores, dim=-1, dtype=torch.float32).double() @ v  # eager attention: fp32 softmax
        x = x + attn.transpose(0, 1).reshape(seq, heads * dim) @ st[p + "attention.wo.weight"].T
        h = _rms_norm(x, st[p + "ffn_norm.weight"], eps)
        gate = torch.nn.functional.silu(h @ st[p + "feed_forward.w1.weight"].T)
        x = x + (gate * (h @ st[p + "feed_forward.w3.weight"].T)) @ st[p + "feed_forward.w2.weight"].T
    return _rms_norm(x, st["model.norm.weight"], eps) @ st["output.weight"].T


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def esc_rank(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny base (2 safetensors shards) + adapters fluency/empathic_en, converted once with small output shards."""
    root = tmp_path_factory.mktemp("esc_rank")
    config, state = build_internlm2(root / "internlm2-chat-7b")
    adapters = {
        "fluency": build_adapter(root / "ESC-RANK" / "fluency", root / "internlm2-chat-7b", config, seed=11),
        "empathic_en": build_adapter(root / "ESC-RANK" / "empathic_en", root / "internlm2-chat-7b", config, seed=12),
    }
    out = convert_esc_rank(root / "internlm2-chat-7b", root / "ESC-RANK", root / "converted", max_shard_size="100KB")
    return {"root": root, "config": config, "state": state, "adapters": adapters, "out": out}


def _llama(folder: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="eager").eval()


def _ids(config: dict, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, config["vocab_size"], (seq,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids[None]).logits[0].double()


def _assert_matches(
    load: Callable[[torch.dtype], torch.nn.Module], ids: torch.Tensor, want: torch.Tensor, fp64_atol: float = FP64_ATOL
) -> None:
    """``load(dtype)`` -> model; its logits must match ``want`` in float32 (rounding) and float64 (exact)."""
    diff32 = (_logits(load(torch.float32), ids) - want).abs().max().item()
    diff64 = (_logits(load(torch.float64), ids) - want).abs().max().item()
    assert diff32 < FP32_ATOL and diff64 < fp64_atol, (diff32, diff64)


# --------------------------------------------------------------------------- base model


def test_converted_base_matches_internlm2_reference(esc_rank: dict) -> None:
    """Stock LlamaForCausalLM on the converted folder gives InternLM2's logits (fp32 within 2e-5, fp64 bit-exact).

    The q/k/v matrices are bit-identical to the rows InternLM2's rearrange picks, and a wrong
    (contiguous q|k|v) split is far off, so the match is not luck.
    """
    from safetensors.torch import load_file

    config, state, base = esc_rank["config"], esc_rank["state"], esc_rank["out"] / "base"
    ids = _ids(config, SEQ)
    want = reference_logits(config, state, ids)
    _assert_matches(lambda dtype: _llama(base, dtype), ids, want)
    assert (reference_logits(config, state, ids, naive_split=True) - want).abs().max() > 0.1
    converted = {}
    for shard in (esc_rank["out"] / "base").glob("model-*.safetensors"):
        converted |= load_file(str(shard))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    dim, hidden = config["hidden_size"] // heads, config["hidden_size"]
    for layer in range(config["num_hidden_layers"]):
        fused = state[f"model.layers.{layer}.attention.wqkv.weight"]
        grouped = fused.reshape(kv_heads, heads // kv_heads + 2, dim, hidden)  # "(h gs d) dim -> h gs d dim"
        prefix = f"model.layers.{layer}.self_attn."
        assert torch.equal(converted[prefix + "q_proj.weight"], grouped[:, :-2].reshape(-1, hidden))
        assert torch.equal(converted[prefix + "k_proj.weight"], grouped[:, -2].reshape(-1, hidden))
        assert torch.equal(converted[prefix + "v_proj.weight"], grouped[:, -1].reshape(-1, hidden))


def test_converted_folder_is_plain_llama(esc_rank: dict) -> None:
    """Output: no remote code, no auto_map, Llama keys only, sharded safetensors + index, and a manifest."""
    out = esc_rank["out"]
    base = out / "base"
    config = json.loads((base / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["rope_scaling"]["rope_type"] == "dynamic" and config["rope_scaling"]["factor"] == 2.0
    assert not list(out.rglob("*.py")) and not list(out.rglob(".*"))
    for path in out.rglob("*.json"):
        assert "auto_map" not in json.loads(path.read_text()), path
    index = json.loads((base / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert all(re.fullmatch(r"(model\.|lm_head\.).*", k) for k in index["weight_map"])
    assert not any("wqkv" in k or "feed_forward" in k for k in index["weight_map"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["adapters"]) == {"fluency", "empathic_en"}
    assert "fluency_en" in manifest["esc_rank_adapters_missing"]
    assert manifest["base"]["tokenizer"]["verified"]["mismatches"] == []
    assert manifest["adapters"]["fluency"]["tokenizer"]["same_files_as"] == "base"
    adapter_dir = out / "adapters" / "fluency"
    assert (adapter_dir / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert "modeling_internlm2.py" in manifest["base"]["dropped_files"]
    generation = json.loads((base / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, config["vocab_size"] - 2]


def test_dynamic_rope_beyond_max_position_embeddings(esc_rank: dict) -> None:
    """Past max_position_embeddings transformers' dynamic rope equals InternLM2's dynamic NTK on a fresh forward.

    Float64 agrees to 1e-5 only: transformers computes the rescaled base as a float32 tensor,
    the remote code as a Python float (relative difference ~1e-7). Also pins the documented
    difference in state: after a long input transformers resets to unscaled rope for a short
    one (InternLM2's remote code would keep the scaled frequencies).
    """
    config, state, base = esc_rank["config"], esc_rank["state"], esc_rank["out"] / "base"
    long_ids = _ids(config, 48, seed=1)  # 48 > max_position_embeddings = 32
    want = reference_logits(config, state, long_ids)
    _assert_matches(lambda dtype: _llama(base, dtype), long_ids, want, fp64_atol=1e-5)
    assert (reference_logits(config, state, long_ids, scaling=False) - want).abs().max() > 1e-2
    model = _llama(base, torch.float64)
    _logits(model, long_ids)
    short_ids = _ids(config, SEQ, seed=2)
    assert (_logits(model, short_ids) - reference_logits(config, state, short_ids)).abs().max() < FP64_ATOL


def test_rope_scaling_drop_is_exact_up_to_max_positions(esc_rank: dict, tmp_path: Path) -> None:
    """rope_scaling='drop' writes no scaling; logits still equal InternLM2's for inputs <= max_position_embeddings."""
    convert_base(esc_rank["root"] / "internlm2-chat-7b", tmp_path / "base", rope_scaling="drop")
    assert json.loads((tmp_path / "base" / "config.json").read_text())["rope_scaling"] is None
    ids = _ids(esc_rank["config"], 32, seed=3)
    want = reference_logits(esc_rank["config"], esc_rank["state"], ids)
    _assert_matches(lambda dtype: _llama(tmp_path / "base", dtype), ids, want)


def test_bin_shards_convert_to_the_same_tensors(esc_rank: dict, tmp_path: Path) -> None:
    """pytorch_model-*.bin shards (index JSON, torch.load weights_only) give exactly the safetensors result."""
    from safetensors.torch import load_file

    config, state = build_internlm2(tmp_path / "src", fmt="bin", shards=3)
    assert torch.equal(state["output.weight"], esc_rank["state"]["output.weight"])  # same seed, same weights
    convert_base(tmp_path / "src", tmp_path / "dst")
    single = load_file(str(tmp_path / "dst" / "model.safetensors"))
    sharded = {}
    for shard in sorted((esc_rank["out"] / "base").glob("model-*.safetensors")):
        sharded |= load_file(str(shard))
    assert single.keys() == sharded.keys() and all(torch.equal(single[k], sharded[k]) for k in single)


def test_split_at_real_internlm2_chat_7b_geometry() -> None:
    """At the real geometry (32 q heads, 8 kv heads, head_dim 128) q/k/v take exactly the rows the remote code uses.

    Checked row by row against index arithmetic for ``(h gs d)``, for the weight and for a LoRA B (r=8).
    """
    geo = Geometry.from_config(INTERNLM2_CHAT_7B_CONFIG, "config.json")
    assert (geo.head_dim, geo.q_per_kv, geo.qkv_rows) == (128, 4, 6144)
    fused = torch.arange(geo.qkv_rows, dtype=torch.float64)[:, None].repeat(1, 8)  # row id in every column
    q, k, v = split_wqkv(fused, geo)
    slot = geo.q_per_kv + 2
    q_rows = [((h // 4) * slot + h % 4) * 128 + d for h in range(32) for d in range(128)]
    k_rows = [(g * slot + 4) * 128 + d for g in range(8) for d in range(128)]
    v_rows = [(g * slot + 5) * 128 + d for g in range(8) for d in range(128)]
    for part, rows in ((q, q_rows), (k, k_rows), (v, v_rows)):
        assert part[:, 0].tolist() == rows and part.shape[1] == 8


def test_real_config_maps_to_llama_that_transformers_reads(tmp_path: Path) -> None:
    """internlm2-chat-7b's config.json becomes a Llama config that stock AutoConfig reads with dynamic rope x2."""
    from transformers import AutoConfig

    converted = llama_config(INTERNLM2_CHAT_7B_CONFIG, Path("config.json"))
    assert "auto_map" not in converted and converted["head_dim"] == 128 and converted["torch_dtype"] == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(converted))
    loaded = AutoConfig.from_pretrained(str(tmp_path))
    assert type(loaded).__name__ == "LlamaConfig" and loaded.num_key_value_heads == 8
    rope = getattr(loaded, "rope_parameters", None) or {**loaded.rope_scaling, "rope_theta": loaded.rope_theta}
    assert (rope["rope_type"], rope["factor"], rope["rope_theta"]) == ("dynamic", 2.0, 1e6)
    assert loaded.max_position_embeddings == 32768 and loaded.vocab_size == 92544
    old = INTERNLM2_CHAT_7B_CONFIG | {"model_type": "internlm", "rope_scaling": {"type": "dynamic", "factor": 1.0}}
    assert llama_config(old, Path("config.json"))["rope_scaling"]["factor"] == 1.0
    with pytest.raises(ConversionError, match="bias"):
        llama_config(INTERNLM2_CHAT_7B_CONFIG | {"bias": True}, Path("config.json"))
    with pytest.raises(ConversionError, match="not an InternLM2"):
        llama_config(
            {**INTERNLM2_CHAT_7B_CONFIG, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}, Path("c")
        )


# --------------------------------------------------------------------------- adapters


def test_each_adapter_matches_fused_lora_reference(esc_rank: dict) -> None:
    """PeftModel.from_pretrained(converted base, converted adapter) == InternLM2 with W_qkv + (alpha/r)·B@A."""
    from peft import PeftModel

    config, state, out = esc_rank["config"], esc_rank["state"], esc_rank["out"]
    ids = _ids(config, SEQ, seed=4)
    plain = reference_logits(config, state, ids)
    for name, weights in esc_rank["adapters"].items():
        adapter_config = json.loads((out / "adapters" / name / "adapter_config.json").read_text())
        assert adapter_config["target_modules"] == ["q_proj", "k_proj", "v_proj"]
        assert adapter_config["base_model_name_or_path"] == str((out / "base").resolve())
        assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
        want = reference_logits(config, state, ids, lora=weights, lora_scale=16 / 8)
        folder = str(out / "adapters" / name)
        _assert_matches(
            lambda dtype, f=folder: PeftModel.from_pretrained(_llama(out / "base", dtype), f).eval(), ids, want
        )
        assert (want - plain).abs().max() > 0.1  # the adapter really changes the output


def test_two_adapters_in_one_peft_model(esc_rank: dict) -> None:
    """load_adapter + set_adapter switches between converted adapters; each matches its fused reference."""
    from peft import PeftModel

    config, state, out = esc_rank["config"], esc_rank["state"], esc_rank["out"]
    ids = _ids(config, SEQ, seed=5)
    base = _llama(out / "base", torch.float64)
    model = PeftModel.from_pretrained(base, str(out / "adapters" / "fluency"), adapter_name="fluency")
    model.load_adapter(str(out / "adapters" / "empathic_en"), adapter_name="empathic")
    model.eval()
    for name, key in (("empathic", "empathic_en"), ("fluency", "fluency"), ("empathic", "empathic_en")):
        model.set_adapter(name)
        want = reference_logits(config, state, ids, lora=esc_rank["adapters"][key], lora_scale=2.0)
        assert (_logits(model, ids) - want).abs().max() < FP64_ATOL
    with model.disable_adapter():
        assert (_logits(model, ids) - reference_logits(config, state, ids)).abs().max() < FP64_ATOL


def test_adapter_files_kept_and_converted(esc_rank: dict) -> None:
    """Only the LoRA keys/target_modules/base path change; other config fields and all_results.json are kept."""
    from safetensors.torch import load_file

    src = esc_rank["root"] / "ESC-RANK" / "fluency"
    dst = esc_rank["out"] / "adapters" / "fluency"
    old, new = (
        json.loads((src / "adapter_config.json").read_text()),
        json.loads((dst / "adapter_config.json").read_text()),
    )
    changed = {k for k in old if old[k] != new.get(k)}
    assert changed == {"target_modules", "base_model_name_or_path"} and set(new) == set(old)
    assert (dst / "all_results.json").read_bytes() == (src / "all_results.json").read_bytes()
    keys = set(load_file(str(dst / "adapter_model.safetensors")))
    layers = esc_rank["config"]["num_hidden_layers"]
    assert keys == {
        f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{ab}.weight"
        for i in range(layers)
        for m in ("q_proj", "k_proj", "v_proj")
        for ab in "AB"
    }


# --------------------------------------------------------------------------- tokenizer


def _remote_tokenizer_ids(sp, text: str, specials: dict[str, int], bos: int) -> list[int]:
    """InternLM2Tokenizer (transformers >= 4.34): split on added tokens, SentencePiece each chunk, prepend BOS."""
    ids, rest = [bos], text
    pattern = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
    for part in pattern.split(rest):
        if part in specials:
            ids.append(specials[part])
        elif part:
            ids.extend(sp.encode(part))
    return ids


def _texts(seed: int = 0, count: int = 150) -> list[str]:
    """Corpus lines plus random mixes of words, whitespace runs, emoji, CJK and special tokens."""
    rng = random.Random(seed)
    words = " ".join(CORPUS).split() + ["😀", "🎉", "©", "ﬁ", "Ⅻ", "\u200b", "’", "ＡＢＣ", "x" * 12, "0.5"]
    glue = [" ", "  ", "   ", "\n", "\n\n", "\t", "", " \n "]
    specials = [s for s, _ in SPECIAL_TOKENS] + ["<s>", "</s>"]
    texts = list(CORPUS)
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            parts.append(rng.choice(specials) if rng.random() < 0.15 else rng.choice(words))
            parts.append(rng.choice(glue))
        texts.append("".join(parts) if rng.random() < 0.7 else " " + "".join(parts))
    return texts


@pytest.mark.parametrize(
    "spec",
    [
        TinySpec(),
        TinySpec(add_dummy_prefix=False),
        TinySpec(normalization="nmt_nfkc", remove_extra_whitespaces=True),
    ],
    ids=["identity-prefix", "identity-noprefix", "nfkc-strip-whitespace"],
)
def test_stock_tokenizer_equals_sentencepiece(spec: TinySpec, tmp_path: Path) -> None:
    """AutoTokenizer on the converted folder encodes ~170 texts exactly like the remote InternLM2Tokenizer.

    (SentencePiece per chunk between special tokens, BOS first), decodes like SentencePiece,
    keeps the special-token ids and the chat template, and needs no remote code.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer

    (tmp_path / "src").mkdir()
    vocab = write_tokenizer(tmp_path / "src", spec)
    convert_tokenizer(tmp_path / "src", tmp_path / "dst")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "dst"))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "src" / "tokenizer.model"))
    specials = {s: vocab - back for s, back in SPECIAL_TOKENS} | {"<unk>": 0, "<s>": 1, "</s>": 2}
    for s, i in specials.items():
        assert tokenizer.convert_tokens_to_ids(s) == i
    for text in _texts():
        assert tokenizer(text)["input_ids"] == _remote_tokenizer_ids(sp, text, specials, 1), text
        if not any(s in text for s in specials):
            ids = sp.encode(text)
            assert tokenizer.decode(ids) == sp.decode(ids), text
    messages = [{"role": "system", "content": "You are InternLM."}, {"role": "user", "content": "我很难过"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = "<s><|im_start|>system\nYou are InternLM.<|im_end|>\n<|im_start|>user\n我很难过<|im_end|>\n"
    assert rendered == expected + "<|im_start|>assistant\n"
    assert tokenizer.decode([1, *sp.encode("hi"), vocab - 2], skip_special_tokens=True) == sp.decode(sp.encode("hi"))
    config = json.loads((tmp_path / "dst" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in config


def test_tokenizer_self_check_catches_a_wrong_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tokenizer.json that drops SentencePiece's dummy prefix fails the built-in check ('strict', naming
    tokenizer.model) and is only recorded in the manifest with tokenizer_check='report'."""
    from tokenizers import normalizers

    import esc_guard_tasks.esc_rank.convert.tokenizer as convert

    (tmp_path / "src").mkdir()
    write_tokenizer(tmp_path / "src", TinySpec())
    build = convert._build_tokenizer_json

    def without_prefix(*args: object, **kwargs: object) -> object:
        tok = build(*args, **kwargs)
        tok.normalizer = normalizers.Replace(" ", "▁")
        return tok

    monkeypatch.setattr(convert, "_build_tokenizer_json", without_prefix)
    with pytest.raises(ConversionError, match=re.escape(str(tmp_path / "src" / "tokenizer.model")) + ".*differs"):
        convert_tokenizer(tmp_path / "src", tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    report = convert_tokenizer(tmp_path / "src", tmp_path / "report", check="report")
    assert len(report["verified"]["mismatches"]) > 5


# --------------------------------------------------------------------------- errors, atomicity, CLI


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


def test_adapter_targeting_wo_is_rejected(esc_rank: dict, tmp_path: Path) -> None:
    """target_modules other than ['wqkv'] fails with the adapter_config.json path in the message; nothing is written."""
    src = tmp_path / "wo_adapter"
    build_adapter(src, esc_rank["root"] / "internlm2-chat-7b", esc_rank["config"], seed=3, target_modules=["wo"])
    with pytest.raises(ConversionError, match=re.escape(str(src / "adapter_config.json")) + r".*\['wo'\]"):
        convert_adapter(src, tmp_path / "out", esc_rank["config"], esc_rank["out"] / "base")
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_missing_shard_is_named(esc_rank: dict, tmp_path: Path) -> None:
    """A shard listed in the index but absent fails with its path; no partial output folder remains."""
    src = tmp_path / "src"
    shutil.copytree(esc_rank["root"] / "internlm2-chat-7b", src)
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match=re.escape(str(src / "model-00002-of-00002.safetensors"))):
        convert_base(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists() and not _leftovers(tmp_path)


def test_unexpected_key_and_bad_shape_are_named(esc_rank: dict, tmp_path: Path) -> None:
    """An unknown tensor names the key and its shard; a config that contradicts the wqkv shape names both files."""
    from safetensors.torch import save_file

    src = tmp_path / "src"
    shutil.copytree(esc_rank["root"] / "internlm2-chat-7b", src)
    shard = src / "model-00002-of-00002.safetensors"
    index = json.loads((src / "model.safetensors.index.json").read_text())
    extra = {"model.layers.0.attention.wqkv.bias": torch.zeros(3)}
    from safetensors.torch import load_file

    save_file(load_file(str(shard)) | extra, str(shard))
    index["weight_map"]["model.layers.0.attention.wqkv.bias"] = shard.name
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=re.escape(str(shard)) + ".*wqkv.bias"):
        convert_base(src, tmp_path / "dst1")

    src2 = tmp_path / "src2"
    shutil.copytree(esc_rank["root"] / "internlm2-chat-7b", src2)
    config = json.loads((src2 / "config.json").read_text()) | {"num_key_value_heads": 1}
    (src2 / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"wqkv\.weight has shape .*config\.json implies"):
        convert_base(src2, tmp_path / "dst2")


def test_cli_end_to_end(esc_rank: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main([SRC_BASE, SRC_ADAPTERS, DST]) converts, prints DST; refuses to overwrite; bad input -> exit 1."""
    root = esc_rank["root"]
    dst = tmp_path / "cli"
    assert main([str(root / "internlm2-chat-7b"), str(root / "ESC-RANK"), str(dst), "--rope-scaling", "drop"]) == 0
    assert capsys.readouterr().out.strip() == str(dst)
    assert sorted(p.name for p in (dst / "adapters").iterdir()) == ["empathic_en", "fluency"]
    assert json.loads((dst / "base" / "config.json").read_text())["rope_scaling"] is None
    assert main([str(root / "internlm2-chat-7b"), str(root / "ESC-RANK"), str(dst)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([str(root / "ESC-RANK"), str(root / "ESC-RANK"), str(tmp_path / "x")]) == 1
    assert "config.json: missing" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not _leftovers(tmp_path)
