"""Tiny random chat models built in code, for fast offline tests.

The Hugging Face Hub is unreachable in CI, so tests build their models: a byte-level BPE
tokenizer trained on a fixed EN/ZH corpus plus a random 2-layer Llama (~135k parameters,
~0.5 MB). The output is gibberish, but it is deterministic (same seed, same bytes) and
never empty, which is all that harness and dialogue-plumbing tests need.

Plain functions only; fixtures live in conftest.py.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

__all__ = [
    "CHATML_TEMPLATE",
    "CORPUS",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "build_tiny_chat_model",
]

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<pad>"
# Order fixes the ids: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2 (as in SmolLM2), <pad>=3.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", EOS_TOKEN, PAD_TOKEN]

# ChatML without a default system prompt, so rendered prompts contain only what the test
# passed in.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = [
    "I have been feeling really anxious about my exams lately.",
    "It sounds like you are carrying a lot of pressure right now.",
    "My best friend stopped talking to me and I don't know why.",
    "That must feel confusing and lonely. Would you like to talk about it?",
    "I lost my job last month and I feel like a failure.",
    "Losing a job is hard, and it does not make you a failure.",
    "I can't sleep at night because I keep worrying about money.",
    "Thank you for sharing this with me. What worries you the most?",
    "My parents argue all the time and I feel stuck in the middle.",
    "You deserve to feel safe and heard at home.",
    "Sometimes I feel like nobody understands me.",
    "I'm here to listen. Take your time.",
    "My dog died last week and the house feels empty.",
    "I am so sorry for your loss. Grief can take many shapes.",
    "I want to feel better, but I don't know where to start.",
    "Small steps count. What helped you a little in the past?",
    "The weather is nice today, so I went for a walk in the park.",
    "She reads a book every evening before going to bed.",
    "Please describe the picture and tell me what you see.",
    "How are you feeling today, and what brings you here?",
    "It is completely normal to feel this way after a breakup.",
    "Have you been able to talk to anyone you trust?",
    "我最近压力很大，晚上总是睡不着。",
    "听起来你最近真的很辛苦，愿意多说一点吗？",
    "我和好朋友吵架了，心里很难过。",
    "吵架之后感到难过是很正常的，你们之间发生了什么？",
    "我失业了，觉得自己很没用。",
    "失业不代表你没有价值，这段时间你是怎么度过的？",
    "我很担心考试，怕让父母失望。",
    "谢谢你愿意告诉我这些，我会一直在这里倾听。",
    "今天天气很好，我去公园散步了。",
    "你现在感觉怎么样？有什么我可以帮你的吗？",
    "我觉得没有人理解我。",
    "你的感受很重要，我们可以慢慢来。",
]


def _train_tokenizer(vocab_target: int):
    """Byte-level BPE trained on CORPUS: encodes any text, deterministic, ~500 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def _has_control_char(text: str) -> bool:
    """True for raw control bytes such as \\x05, which make logs and reports unreadable."""
    return any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text)


def build_tiny_chat_model(
    dest: Path,
    seed: int = 0,
    vocab_target: int = 512,
    *,
    hidden_size: int = 64,
    num_heads: int = 4,
    max_positions: int = 4096,
) -> Path:
    """Build a tiny random ChatML Llama chat model and save it into ``dest``.

    Greedy replies are deterministic and never empty after ``strip()``:

    * embeddings are untied (tied random embeddings echo the last prompt token, so a
      prompt ending in ``assistant\\n`` yields only newlines);
    * the non-EOS special tokens are always suppressed (they decode to ""), and so are
      raw control bytes (keeps the gibberish printable);
    * EOS and whitespace-only tokens are suppressed for the first new token only, so a
      reply starts with visible text but may still end naturally at ``<|im_end|>``.

    The same ``seed`` gives a byte-identical ``model.safetensors``; the global torch RNG
    is left untouched.

    ``hidden_size`` / ``num_heads`` set the attention head size (default 64 / 4 = 16;
    vLLM's CPU attention kernel needs at least 32, e.g. 128 / 4); the MLP is twice the
    hidden size and there are half as many KV heads. ``max_positions`` is the context
    length the config declares (vLLM refuses longer prompts).
    """
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    if vocab_target <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_target must exceed the 256 byte tokens + specials, got {vocab_target}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(vocab_target),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=4096,
        # LLaVA-style generate() rejects token_type_ids; plain chat models don't need them.
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE

    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    bos_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    special_ids = sorted(tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS))
    vocab_size = len(tokenizer)
    texts = {i: tokenizer.decode([i]) for i in range(vocab_size) if i not in special_ids}
    blank_ids = [i for i, text in texts.items() if not text.strip()]
    control_ids = [i for i, text in texts.items() if _has_control_char(text)]

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        do_sample=False,
        suppress_tokens=sorted({*special_ids, *control_ids} - {eos_id}),
        begin_suppress_tokens=[eos_id, *blank_ids],
    )
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    return dest
