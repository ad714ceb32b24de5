"""A tiny ESC-RANK stand-in built in code: a Llama judge with 14 LoRA adapters named like the real ones.

The base is the tiny chat model with InternLM2's chat template (BOS first, system block
rendered when given) and with the lm_head rows of the digits 0–4 scaled up, so its first
generated token is nearly always a digit: judgements are then valid, differ per adapter
and per dialogue, and logits mode can be compared with generation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiny_models import build_tiny_chat_model

INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ADAPTER_KEYS = ["fluency", "diversity", "empathic", "suggestion", "human", "tech", "overall"]
ADAPTER_FOLDERS = ADAPTER_KEYS + [f"{k}_en" for k in ADAPTER_KEYS]
# The adapter_config.json fields every PEFT LoRA checkpoint we mimic writes with the same value.
_LORA_COMMON: dict[str, Any] = {
    "alpha_pattern": {},
    "auto_mapping": None,
    "bias": "none",
    "fan_in_fan_out": False,
    "inference_mode": True,
    "init_lora_weights": True,
    "layers_pattern": None,
    "layers_to_transform": None,
    "peft_type": "LORA",
    "rank_pattern": {},
    "revision": None,
}


def lora_adapter_config(**fields: Any) -> dict[str, Any]:
    """adapter_config.json of a PEFT LoRA checkpoint: the shared defaults plus ``fields``, keys sorted as PEFT
    writes them (so ESC-RANK's and GuardRank's stand-ins differ only where the real checkpoints do)."""
    return dict(sorted((_LORA_COMMON | fields).items()))


def build_tiny_judge(root: Path, digit_scale: float = 30.0, **model_shape: int) -> tuple[Path, Path]:
    """(base folder, adapters folder) with one LoRA adapter per ESC-RANK folder name.

    ``model_shape`` goes to ``build_tiny_chat_model`` (e.g. a head size vLLM's CPU kernel supports)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_chat_model(root / "base", seed=3, **model_shape)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.bos_token = "<|endoftext|>"
    tokenizer.chat_template = INTERNLM2_CHAT_TEMPLATE
    tokenizer.save_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    generator = torch.Generator().manual_seed(11)
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in "01234"]
    with torch.no_grad():
        rows = torch.randn(len(digit_ids), model.config.hidden_size, generator=generator)
        model.lm_head.weight[digit_ids] = digit_scale * rows / rows.norm(dim=1, keepdim=True)
    model.generation_config.begin_suppress_tokens = None
    model.save_pretrained(base)

    adapters = root / "adapters"
    for seed, folder in enumerate(ADAPTER_FOLDERS):
        fresh = AutoModelForCausalLM.from_pretrained(base)
        torch.manual_seed(100 + seed)
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj"],
            task_type="CAUSAL_LM",
            init_lora_weights=False,
        )
        get_peft_model(fresh, config).save_pretrained(adapters / folder)
        (adapters / folder / "all_results.json").write_text(json.dumps({"note": "tiny test adapter"}))
    return base, adapters
