"""In-process judge on vLLM: one engine, the base model, every LoRA adapter served at once.

Same semantics as ``hf_lora.HFLoraJudge`` (the reference for what a reply is): each
request is rendered by the judge's own chat template with BOS exactly once, read by
its adapter (none: the base model), and answered greedily up to ``max_new_tokens``,
stopping at ``<|im_end|>``; with ``score_mode="logits"`` the reply is the label whose
single token has the highest next-token probability. Unlike the hf backend, all
requests, whatever their adapter, go to the engine in one call, each with its own
``LoRARequest``, and vLLM batches them (multi-LoRA).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from esc_guard_tasks.judges.base import JudgeRequest
from esc_guard_tasks.judges.tokens import cut_at, label_token_ids, prompt_ids
from esc_guard_tasks.usage import TokenCount, UsageMeter

log = logging.getLogger("lm_eval.esc_guard_tasks")
SCORE_MODES = ("generate", "logits")
# judge_args passed through to ``vllm.LLM`` (vLLM engine arguments of the same names).
ENGINE_ARGS = (
    "dtype",
    "max_model_len",
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "kv_cache_memory_bytes",
    "enforce_eager",
    "distributed_executor_backend",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_lora_rank",
    "seed",
)


def adapter_rank(folder: str | Path) -> int:
    """The largest LoRA rank a PEFT adapter folder declares (``r`` and any ``rank_pattern`` entry)."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text("utf-8"))
    return max([int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def engine_lora_rank(ranks: Sequence[int]) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds every adapter's rank."""
    import typing

    needed = max(ranks)
    try:
        from vllm.config.lora import MaxLoRARanks

        allowed = sorted(typing.get_args(MaxLoRARanks))
    except ImportError:  # another vLLM layout: its long-standing set
        allowed = [8, 16, 32, 64, 128, 256, 320, 512]
    for rank in allowed:
        if rank >= needed:
            return rank
    raise ValueError(f"LoRA rank {needed} exceeds vLLM's largest max_lora_rank ({allowed[-1]})")


class VLLMLoraJudge:
    def __init__(
        self,
        pretrained: str,
        adapters: Mapping[str, str] | None = None,
        *,
        dtype: str = "auto",
        score_mode: str = "generate",
        max_new_tokens: int = 16,
        labels: Sequence[str] = (),
        stop_strings: Sequence[str] = ("<|im_end|>",),
        identity: Mapping[str, Any] | None = None,
        **engine_args: Any,
    ):
        """``engine_args``: any of ``ENGINE_ARGS`` (``max_model_len``, ``kv_cache_memory_bytes`` …).

        Without ``kv_cache_memory_bytes`` vLLM sizes the KV cache itself: from
        ``gpu_memory_utilization`` on a GPU, from ``VLLM_CPU_KVCACHE_SPACE`` (GiB) on CPU.
        """
        if score_mode not in SCORE_MODES:
            raise ValueError(f"judge score_mode must be one of {', '.join(SCORE_MODES)}, got {score_mode!r}")
        if score_mode == "logits" and not labels:
            raise ValueError("score_mode=logits needs the score labels")
        unknown = sorted(set(engine_args) - set(ENGINE_ARGS))
        if unknown:
            raise ValueError(
                f"unknown vLLM engine arguments for the judge: {', '.join(unknown)}"
                f" (accepted: {', '.join(ENGINE_ARGS)})"
            )
        import vllm
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.score_mode = score_mode
        self.max_new_tokens = int(max_new_tokens)
        self.labels = tuple(labels)
        self.stop_strings = tuple(stop_strings)
        adapters = {name: str(path) for name, path in (adapters or {}).items()}
        # Stable ids: the same adapter name always gets the same id, whatever the dict order.
        self.lora_requests = {
            name: LoRARequest(name, lora_id, adapters[name]) for lora_id, name in enumerate(sorted(adapters), start=1)
        }
        self._identity = {
            "backend": "vllm",
            "pretrained": str(pretrained),
            "adapters": adapters,
            "dtype": dtype,
            "score_mode": score_mode,
            "max_new_tokens": self.max_new_tokens,
            "vllm_version": vllm.__version__,
        } | dict(identity or {})

        options = {k: v for k, v in engine_args.items() if v is not None}
        if adapters:
            options.setdefault("max_lora_rank", engine_lora_rank([adapter_rank(p) for p in adapters.values()]))
            # One slot more than adapters: on CPU, base-model rows batched with adapter rows
            # pick up the last slot's adapter when every slot is taken (vLLM bug).
            options |= {"enable_lora": True, "max_loras": len(adapters) + 1, "max_cpu_loras": len(adapters) + 1}
        else:
            options.pop("max_lora_rank", None)
        log.info("Starting the vLLM judge engine for %s with %d adapters", pretrained, len(adapters))
        self.llm = LLM(model=str(pretrained), tokenizer=str(pretrained), dtype=dtype, **options)
        self.tokenizer = self.llm.get_tokenizer()
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"judge tokenizer at {pretrained} has no chat template")
        self.stop_token_ids = sorted(
            {self.tokenizer.eos_token_id}
            | {i for s in self.stop_strings if (i := self.tokenizer.convert_tokens_to_ids(s)) is not None}
            - {self.tokenizer.unk_token_id, None}
        )
        self._label_ids: list[int] | None = None
        self.tokens = UsageMeter()  # shared with with_options() copies: one engine, one count

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def with_options(self, *, score_mode: str | None = None, max_new_tokens: int | None = None) -> VLLMLoraJudge:
        """The same engine (weights, adapters, prefix cache) replying with other settings; identity follows."""
        other = copy.copy(self)
        other.score_mode = self.score_mode if score_mode is None else score_mode
        other.max_new_tokens = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if other.score_mode not in SCORE_MODES:
            raise ValueError(f"judge score_mode must be one of {', '.join(SCORE_MODES)}, got {other.score_mode!r}")
        if other.score_mode == "logits" and not other.labels:
            raise ValueError("score_mode=logits needs the score labels")
        other._identity = self._identity | {"score_mode": other.score_mode, "max_new_tokens": other.max_new_tokens}
        return other

    def render(self, request: JudgeRequest) -> list[int]:
        """Token ids of the request under the judge's own chat template (BOS exactly once)."""
        return prompt_ids(self.tokenizer, request)

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str]:
        """All requests in one engine call, each with its adapter's ``LoRARequest`` (None: the base model)."""
        if not requests:
            return []
        for request in requests:
            if request.adapter and request.adapter not in self.lora_requests:
                raise KeyError(f"judge has no adapter {request.adapter!r}; loaded: {sorted(self.lora_requests)}")
        from vllm import SamplingParams, TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=self.render(r)) for r in requests]
        loras = [self.lora_requests.get(r.adapter) if r.adapter else None for r in requests]
        if self.score_mode == "logits":
            label_ids = self._label_token_ids(prompts[0]["prompt_token_ids"])
            params = SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=label_ids)
        else:
            # Stop strings that are one token stop by id (special tokens never reach the text).
            text_stops = [
                s for s in self.stop_strings if self.tokenizer.convert_tokens_to_ids(s) not in self.stop_token_ids
            ]
            params = SamplingParams(
                temperature=0.0,
                max_tokens=self.max_new_tokens,
                stop_token_ids=self.stop_token_ids,
                stop=text_stops or None,
                skip_special_tokens=True,
            )
        outputs = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        self.tokens.record(TokenCount(len(out.prompt_token_ids), len(out.outputs[0].token_ids)) for out in outputs)
        if self.score_mode == "logits":
            by_id = dict(zip(label_ids, self.labels, strict=True))
            return [by_id[out.outputs[0].token_ids[0]] for out in outputs]
        # Decoded here as hf_lora decodes (vLLM's incremental detokenizer withholds a trailing
        # incomplete UTF-8 sequence that a full decode renders as U+FFFD).
        decode = partial(self.tokenizer.decode, skip_special_tokens=True)
        return [cut_at(decode(list(out.outputs[0].token_ids)), self.stop_strings) for out in outputs]

    def _label_token_ids(self, prompt: list[int]) -> list[int]:
        if self._label_ids is None:
            self._label_ids = label_token_ids(self.tokenizer, prompt, self.labels)
        return self._label_ids
