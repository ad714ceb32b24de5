"""Tiny GuardRank stand-ins built in code, laid out and keyed like the real checkpoints.

* ``build_llama_base``: a LLaMA-2-shaped ``LlamaForCausalLM`` folder (BOS ``<s>`` = 1 added by the tokenizer,
  EOS ``</s>`` = 2, no pad token, byte fallback) as ``meta-llama/Llama-2-7b-hf`` is, only tiny.
* ``build_guardrank_adapter``: a ``guardrank_lora`` folder as PEFT writes it for a sequence classifier:
  ``adapter_model.bin`` with ``base_model.model.model.layers.N.self_attn.{q,v}_proj.lora_{A,B}.weight`` and the
  trained head ``base_model.model.score.weight``, an ``adapter_config.json`` in the peft 0.6 layout (upstream
  pins peft 0.6.2: ``task_type: SEQ_CLS``, ``modules_to_save: null``), the modern layout
  (``modules_to_save: ["classifier", "score"]``), a config that does not declare the head, or no head at all;
  plus the trainer/tokenizer side files of a Trainer checkpoint.
* ``build_roberta_base`` / ``save_hallucination_pt``: a RoBERTa folder (``<s>``=0, ``<pad>``=1, ``</s>``=2) and
  a ``hallucination.pt`` saved as upstream's ``RobertaLargeClassifier.state_dict()`` (``roberta.*``,
  ``linear.*``), optionally ``module.``-prefixed or with the legacy ``position_ids`` buffer.
* ``ReferenceRobertaClassifier`` and ``reference_decoder_logits``: the upstream computations, written
  independently of the product code (merged LoRA by hand; upstream's padding to 256 / 512).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from judge_fixtures import lora_adapter_config
from tiny_models import CORPUS

LLAMA_HIDDEN = 32
ROBERTA_HIDDEN = 32
LORA_R, LORA_ALPHA = 8, 16
ADAPTER_STYLES = ("peft-0.6", "modules_to_save", "undeclared")


def build_llama_base(dest: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for ch in ["▁", *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "t"), ("▁", "a"), ("▁", "i")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = LlamaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, padding_side="right", legacy=False
    )
    tokenizer.save_pretrained(dest)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=LLAMA_HIDDEN,
        intermediate_size=2 * LLAMA_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    return dest


def peft_06_config(task_type: str | None = "SEQ_CLS", modules_to_save: list[str] | None = None) -> dict:
    """adapter_config.json as peft 0.6.2 writes it for LoRA r=8 on q_proj/v_proj of LLaMA-2-7B."""
    return lora_adapter_config(
        base_model_name_or_path="meta-llama/Llama-2-7b-hf",
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.05,
        modules_to_save=modules_to_save,
        r=LORA_R,
        target_modules=["q_proj", "v_proj"],
        task_type=task_type,
    )


def build_guardrank_adapter(
    base: Path,
    dest: Path,
    *,
    style: str = "peft-0.6",
    head: bool = True,
    added_tokens: dict[str, int] | None = None,
    seed: int = 7,
) -> Path:
    """A ``guardrank_lora`` folder (see the module docstring); the same seed gives the same tensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    if style not in ADAPTER_STYLES:
        raise ValueError(style)
    dest.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=4)
        model.config.pad_token_id = model.config.eos_token_id
        with torch.no_grad():  # the "trained" head: large enough that labels vary between inputs
            model.score.weight.copy_(3.0 * torch.randn(4, LLAMA_HIDDEN))
        config = LoraConfig(
            r=LORA_R,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
            task_type="SEQ_CLS",
            init_lora_weights=False,
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.mul_(4.0)  # LoRA visibly changes the logits
    peft_model.save_pretrained(dest, safe_serialization=False)
    weights = torch.load(dest / "adapter_model.bin", weights_only=True)
    if not head:
        weights = {k: v for k, v in weights.items() if not k.endswith("score.weight")}
    torch.save(weights, dest / "adapter_model.bin")
    adapter_config = {
        "peft-0.6": peft_06_config(),
        "modules_to_save": peft_06_config(modules_to_save=["classifier", "score"]),
        "undeclared": peft_06_config(task_type=None),
    }[style]
    (dest / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    (dest / "added_tokens.json").write_text(json.dumps(added_tokens or {}))
    (dest / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"})
    )
    (dest / "trainer_state.json").write_text(json.dumps({"global_step": 1, "note": "tiny test adapter"}))
    (dest / "README.md").write_text("tiny GuardRank-shaped test adapter\n")
    return dest


def adapter_tensors(adapter: Path) -> dict:
    import torch

    return torch.load(adapter / "adapter_model.bin", weights_only=True)


def reference_decoder_logits(base: Path, adapter: Path, ids_list: list[list[int]]):
    """Upstream's decoder, computed by hand: base + merged LoRA (B·A·alpha/r on q/v) + the adapter's head,
    batch 1, no padding; HF's pooling (last token) on exactly the given ids. float32 [n, 4]."""
    import torch
    from transformers import LlamaForSequenceClassification

    tensors = adapter_tensors(adapter)
    model = LlamaForSequenceClassification.from_pretrained(base, num_labels=4).eval()
    model.config.pad_token_id = model.config.eos_token_id
    scale = LORA_ALPHA / LORA_R
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for proj in ("q_proj", "v_proj"):
                prefix = f"base_model.model.model.layers.{i}.self_attn.{proj}"
                delta = tensors[f"{prefix}.lora_B.weight"] @ tensors[f"{prefix}.lora_A.weight"]
                getattr(layer.self_attn, proj).weight += scale * delta
        model.score.weight.copy_(tensors["base_model.model.score.weight"])
        rows = [model(input_ids=torch.tensor([ids])).logits[0] for ids in ids_list]
    return torch.stack(rows).float()


def upstream_padded_decoder_logits(base: Path, adapter: Path, ids_list: list[list[int]]):
    """Upstream's path: ``PeftModel.from_pretrained`` on the seq-cls base, every input right-padded with EOS to
    512 (attention mask 0 there), the model's own pooling. float32 [n, 4]."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=4)
    model.config.pad_token_id = model.config.eos_token_id
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    eos = model.config.eos_token_id
    ids = torch.tensor([x + [eos] * (512 - len(x)) for x in ids_list])
    mask = torch.tensor([[1] * len(x) + [0] * (512 - len(x)) for x in ids_list])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


# -- RoBERTa ---------------------------------------------------------------------------------------------------


def build_roberta_base(dest: Path) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        CORPUS, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False
    )
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split()) for m in json.loads(trainer.to_str())["model"]["merges"]
    ]
    tokenizer = RobertaTokenizer(vocab=trainer.get_vocab(), merges=merges)
    tokenizer.save_pretrained(dest)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=ROBERTA_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * ROBERTA_HIDDEN,
        max_position_embeddings=260,  # 256 + padding_idx + 1, as roberta-large's 514 = 512 + 2
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        RobertaModel(config).save_pretrained(dest)
    return dest


def reference_classifier_class():
    """Upstream ``guardrank/encoder.py::RobertaLargeClassifier`` (hidden size from the config, 1024 there)."""
    from torch import nn
    from transformers import RobertaModel

    class RobertaLargeClassifier(nn.Module):
        def __init__(self, model_name_or_path, num_labels=2, dropout=0.5):
            super().__init__()
            self.roberta = RobertaModel.from_pretrained(model_name_or_path)
            self.dropout = nn.Dropout(dropout)
            self.linear = nn.Linear(self.roberta.config.hidden_size, num_labels)
            self.relu = nn.ReLU()

        def forward(self, input_ids, attention_mask):
            _, pooled_out = self.roberta(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)
            return self.relu(self.linear(self.dropout(pooled_out)))

    return RobertaLargeClassifier


def save_hallucination_pt(
    base: Path,
    dest: Path,
    *,
    variant: str = "plain",
    linear_weight=None,
    linear_bias=None,
    contrast: tuple[str, str] | None = None,
    seed: int = 5,
) -> Path:
    """``torch.save(RobertaLargeClassifier.state_dict())``: variant plain | module (``module.`` prefix, as
    DataParallel saves) | legacy (with the ``roberta.embeddings.position_ids`` buffer of transformers < 4.31).

    ``contrast=(text_1, text_0)`` makes the head "trained": it separates the two input texts' pooled outputs
    (label 1 for the first, 0 for the second, ±4 margin), so labels vary between inputs (a random tiny RoBERTa
    pools almost the same vector for every input)."""
    import torch
    from transformers import RobertaTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = reference_classifier_class()(str(base))
        with torch.no_grad():
            for param in module.parameters():  # "fine-tuned": every weight, pooler included, differs from base
                param.add_(0.05 * torch.randn_like(param))
            module.linear.weight.mul_(20.0)
            if contrast is not None:
                module.eval()
                tokenizer = RobertaTokenizer.from_pretrained(base)
                encoded = tokenizer(list(contrast), max_length=256, truncation=True, padding=True, return_tensors="pt")
                pooled = module.roberta(**encoded).pooler_output
                direction = pooled[0] - pooled[1]
                scale = 8.0 / direction.norm() ** 2  # d·(p - mid) = ±|d|²/2 at the two texts → ±4
                mid = (pooled[0] + pooled[1]) / 2
                module.linear.weight.copy_(torch.stack([-scale * direction, scale * direction]))
                module.linear.bias.copy_(torch.stack([scale * direction @ mid, -scale * direction @ mid]))
            if linear_weight is not None:
                module.linear.weight.copy_(torch.as_tensor(linear_weight, dtype=torch.float32))
            if linear_bias is not None:
                module.linear.bias.copy_(torch.as_tensor(linear_bias, dtype=torch.float32))
    state = module.state_dict()
    if variant == "legacy":
        positions = module.roberta.config.max_position_embeddings
        state["roberta.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    elif variant == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    elif variant != "plain":
        raise ValueError(variant)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    return dest


def reference_encoder_logits(base: Path, weights: Path, texts: list[str]):
    """Upstream ``encoder.evaluate``: ``load_state_dict(torch.load(...))``, batch 1, padded to 256. [n, 2]."""
    import torch
    from transformers import RobertaTokenizer

    tokenizer = RobertaTokenizer.from_pretrained(base)
    model = reference_classifier_class()(str(base))
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer([text], max_length=256, truncation=True)
            ids = enc["input_ids"][0][:256]
            ids = ids + [tokenizer.pad_token_id] * (256 - len(ids))
            mask = enc["attention_mask"][0] + [0] * (256 - len(enc["attention_mask"][0]))
            rows.append(model(torch.tensor([ids]), torch.tensor([mask]))[0])
    return torch.stack(rows).float()


# -- a payload that must never be unpickled --------------------------------------------------------------------


def mark(path: str) -> dict:
    """Runs only if a pickle is unpickled without restriction: leaves a file behind."""
    Path(path).write_text("unpickled")
    return {}


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (mark, (self.marker,))


def save_pickled_object(dest: Path, marker: Path) -> Path:
    """A ``.pt`` that looks like a state dict but carries an arbitrary pickled object."""
    import torch

    torch.save({"linear.weight": torch.zeros(2, ROBERTA_HIDDEN), "extra": Payload(marker)}, dest)
    return dest
