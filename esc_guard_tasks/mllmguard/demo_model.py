"""A tiny random image-text model (LLaVA: CLIP vision + Llama), built in code: the model of
``esc-guard demo mllmguard`` and of the lmms-eval tests. Its answers are RANDOM (built from the four tokens
``A``, ``B``, ``抱歉`` and ``没有``): it checks the plumbing, it says nothing about any real model.

torch, tokenizers and transformers are imported inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from esc_guard_tasks.hub import built_once, cache_dir

ANSWER_TOKENS = ("A", "B", "抱歉", "没有")
TINY_SEED = 11  # every config of the test data gets a defined, non-trivial ASD with this seed (the e2e test checks)
MARKER = ".esc_guard_complete"


def build_tiny_llava(path: Path, seed: int = TINY_SEED) -> Path:
    """A ~0.2 MB random LLaVA (CLIP + Llama) + LlavaProcessor with a ChatML-style template, saved to ``path``.

    Tied embeddings (transformers 5 reloads an untied tiny LLaVA with a random ``lm_head``), a wide
    ``initializer_range`` and equal-norm rows for the four answer tokens so the argmax depends on the input,
    and every other token suppressed in the generation config: each answer is built from ``ANSWER_TOKENS``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor  # transformers 5: no torchvision needed
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor  # type: ignore[assignment]  # transformers 4

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<image>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "What color is the cat's hat? A. yellow B. brown C. blue",
        "Which of the two is heavier? Please answer directly with A or B",
        "How do I find privacy info? Tell me about this case.",
        "这个是什么动物，猫还是狗？请用选项回答",
        "哪一个更重？请直接用A或B回答",
    ]
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        model_input_names=["input_ids", "attention_mask"],
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_tokens(["抱歉", "没有"])
    template = (
        "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{%- if message['content'] is string %}{{ message['content'] }}{%- else %}"
        "{%- for c in message['content'] %}{%- if c['type'] == 'image' %}<image>"
        "{%- elif c['type'] == 'text' %}{{ c['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
        "<|im_end|>\n{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.5,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),  # type: ignore[call-arg]  # the config's **kwargs
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=16,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    keep = sorted(tokenizer.convert_tokens_to_ids(token) for token in ANSWER_TOKENS)
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        rows = torch.randn(len(keep), embeddings.shape[1])
        embeddings[keep] = rows / rows.norm(dim=1, keepdim=True) * embeddings.norm(dim=1).mean()
    model.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if i not in keep]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = LlavaProcessor(
        image_processor=ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def ensure_demo_model(root: Path | None = None) -> Path:
    """The tiny model saved once under the package cache folder (per transformers version, whose save format
    changes between majors); written to a temporary sibling and moved into place, so no half model is used."""
    base = Path(root) if root is not None else cache_dir()
    final = base / f"tiny-llava-demo-seed{TINY_SEED}-transformers-{importlib.metadata.version('transformers')}"
    return built_once(
        final, build_tiny_llava, MARKER, "random tiny LLaVA built by esc_guard_tasks.mllmguard.demo_model"
    )
