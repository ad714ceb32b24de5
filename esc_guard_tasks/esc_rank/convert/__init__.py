"""Convert ESC-RANK (InternLM2-chat-7b + 14 fused-``wqkv`` LoRA adapters) to the plain Llama layout.

Why: InternLM2's modeling and tokenizer code exist only as hub *remote code* written for
transformers 4.x; we never run it. InternLM2 is architecturally a Llama (RMSNorm, SwiGLU,
GQA, rotary) whose only real difference is a fused ``wqkv`` projection, so after splitting
that matrix the checkpoint loads as ``LlamaForCausalLM`` in stock transformers and vLLM.
Each ESC-RANK adapter is LoRA on ``wqkv`` alone and is rewritten as LoRA on
``q_proj``/``k_proj``/``v_proj`` that applies exactly the same weight delta.

The tokenizer (a SentencePiece BPE model behind remote code) is written as a stock
``tokenizer.json`` and verified against SentencePiece itself on probe texts; a difference
fails the conversion. Weights are streamed tensor by tensor, so a 7B model converts in a few
GB of RAM, and every conversion writes into a temporary sibling folder that is renamed into
place only when complete.

Modules: ``geometry`` (InternLM2 shapes, the ``wqkv`` split, the Llama config and the facts
they rely on), ``base`` (the base model's weights), ``adapters`` (one LoRA adapter),
``tokenizer`` (tokenizer.json builder and verifier), ``bundle`` (base + every adapter, the
ESC-RANK adapter names from the ESC-Eval rubric), ``files`` (JSON, hashes, manifest, atomic
folders), ``cli`` (``esc-guard convert-esc-rank``).
"""

from esc_guard_tasks.esc_rank.convert.adapters import convert_adapter
from esc_guard_tasks.esc_rank.convert.base import convert_base
from esc_guard_tasks.esc_rank.convert.bundle import ESC_RANK_ADAPTERS, convert_esc_rank
from esc_guard_tasks.esc_rank.convert.cli import add_arguments, main, run
from esc_guard_tasks.esc_rank.convert.files import MANIFEST, ConversionError
from esc_guard_tasks.esc_rank.convert.geometry import Geometry, llama_config, split_wqkv
from esc_guard_tasks.esc_rank.convert.tokenizer import convert_tokenizer

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
    "llama_config",
    "main",
    "run",
    "split_wqkv",
]
