"""What the benchmarks run on: tiny models built in code (the tests' builders), SmolLM2, cards, transcripts.

The builders live in ``tests/`` (plain functions, no pytest); the benchmarks put that folder on
``sys.path`` instead of copying them, so a benchmark model is exactly a test model.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from esc_guard_tasks.esc_eval.cards import load_cards  # noqa: E402
from esc_guard_tasks.esc_eval.protocol import Card, Transcript, Turn  # noqa: E402


def tiny_chat_model(root: Path, **shape: int) -> Path:
    """The tests' tiny random ChatML Llama (built once per folder)."""
    from tiny_models import build_tiny_chat_model

    dest = root / ("tiny" + "".join(f"_{k}{v}" for k, v in sorted(shape.items())))
    if not (dest / "config.json").is_file():
        build_tiny_chat_model(dest, **shape)
    return dest


def smollm2() -> Path:
    from esc_guard_tasks.smollm2 import ensure_converted

    return ensure_converted()


def cards(n: int) -> list[Card]:
    """``n`` cards: the packaged demo cards (EN and ZH) cycled, each copy with its own id.

    The real role cards are not redistributable and are fetched from GitHub at run time, which a
    benchmark machine may not reach; the demo cards have the same schema and lengths."""
    demo = load_cards("en", "demo") + load_cards("zh", "demo")
    return [replace(card, id=card.id * 1000 + i) for i, card in zip(range(n), itertools.cycle(demo))]


def synthetic_transcripts(n: int, rounds: int = 5) -> list[Transcript]:
    """``n`` 5-round transcripts of plausible length (sentences of the tests' corpus) for the judges."""
    from tiny_models import CORPUS

    en = [s for s in CORPUS if s.isascii()]
    zh = [s for s in CORPUS if not s.isascii()]
    out = []
    for i, card in enumerate(cards(n)):
        pool = en if card.language == "en" else zh
        transcript = Transcript.start(card)
        for t in range(2 * rounds):
            text = " ".join(pool[(i * 7 + t * 3 + k) % len(pool)] for k in range(3))
            transcript.turns.append(Turn("seeker" if t % 2 == 0 else "supporter", text))
        out.append(transcript)
    return out


def esc_rank_checkpoint(root: Path) -> tuple[str, dict[str, str]]:
    """A tiny InternLM2 base + 14 fused-``wqkv`` ESC-RANK-style adapters, converted by the product's converter.

    After conversion the lm_head rows of the digits 0-4 are scaled up (as ``tests/judge_fixtures.py`` does for
    its Llama judge), so the first generated token is usually a digit and logits/generate agreement is
    measurable rather than vacuous."""
    import torch
    from internlm2_fixtures import TinySpec, build_adapter, build_internlm2
    from judge_fixtures import ADAPTER_FOLDERS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esc_guard_tasks.esc_rank.checkpoints import adapter_folders
    from esc_guard_tasks.esc_rank.convert import convert_esc_rank

    converted = root / "esc_rank_converted"
    if not (converted / "manifest.json").is_file():
        source = root / "internlm2-chat-7b"
        config, _ = build_internlm2(source, TinySpec(max_position_embeddings=16384, rope_scaling=None))
        for seed, folder in enumerate(ADAPTER_FOLDERS):
            build_adapter(root / "ESC-RANK" / folder, source, config, seed=seed)
        convert_esc_rank(source, root / "ESC-RANK", converted, rope_scaling="drop")
        base = converted / "base"
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in "01234"]
        generator = torch.Generator().manual_seed(11)
        with torch.no_grad():
            rows = torch.randn(len(digit_ids), model.config.hidden_size, generator=generator)
            model.lm_head.weight[digit_ids] = 12.0 * rows / rows.norm(dim=1, keepdim=True)
        model.save_pretrained(base)
    return str(converted / "base"), adapter_folders(converted / "adapters")


def guardrank_checkpoints(root: Path) -> dict[str, Path]:
    """Tiny GuardRank decoder (LLaMA base + LoRA adapter with head) and encoder (RoBERTa + hallucination.pt)."""
    from guardrank_fixtures import build_guardrank_adapter, build_llama_base, build_roberta_base, save_hallucination_pt

    paths = {
        "decoder_base": root / "guardrank_llama",
        "decoder_adapter": root / "guardrank_lora",
        "encoder_base": root / "guardrank_roberta",
        "encoder_weights": root / "hallucination.pt",
    }
    if not paths["encoder_weights"].is_file():
        build_llama_base(paths["decoder_base"])
        build_guardrank_adapter(paths["decoder_base"], paths["decoder_adapter"])
        build_roberta_base(paths["encoder_base"])
        save_hallucination_pt(paths["encoder_base"], paths["encoder_weights"])
    return paths
