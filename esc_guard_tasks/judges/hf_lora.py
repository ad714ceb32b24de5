"""In-process judge: transformers + peft, one base model with several LoRA adapters attached.

The base model is loaded once and every adapter attached to it; for each adapter, all
its requests go through batched greedy generation (left-padded, longest first), or, with
``score_mode="logits"``, one right-padded forward pass that reads the next-token
distribution over the score labels.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from esc_guard_tasks.hub import naming_the_model
from esc_guard_tasks.judges.base import JudgeRequest
from esc_guard_tasks.judges.tokens import cut_at, generated_length, label_token_ids, prompt_ids
from esc_guard_tasks.usage import TokenCount, UsageMeter

log = logging.getLogger("lm_eval.esc_guard_tasks")
SCORE_MODES = ("generate", "logits")


class HFLoraJudge:
    def __init__(
        self,
        pretrained: str,
        adapters: Mapping[str, str] | None = None,
        *,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int = 8,
        score_mode: str = "generate",
        max_new_tokens: int = 16,
        labels: Sequence[str] = (),
        stop_strings: Sequence[str] = ("<|im_end|>",),
        identity: Mapping[str, Any] | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if score_mode not in SCORE_MODES:
            raise ValueError(f"judge score_mode must be one of {', '.join(SCORE_MODES)}, got {score_mode!r}")
        if score_mode == "logits" and not labels:
            raise ValueError("score_mode=logits needs the score labels")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = int(batch_size)
        self.score_mode = score_mode
        self.max_new_tokens = int(max_new_tokens)
        self.labels = tuple(labels)
        self.stop_strings = tuple(stop_strings)
        self._identity = {
            "backend": "hf",
            "pretrained": str(pretrained),
            "adapters": {name: str(path) for name, path in (adapters or {}).items()},
            "dtype": dtype,
            "score_mode": score_mode,
            "max_new_tokens": self.max_new_tokens,
        } | dict(identity or {})

        with naming_the_model("judge tokenizer", pretrained, "judge_args pretrained"):
            self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.chat_template is None:
            raise ValueError(f"judge tokenizer at {pretrained} has no chat template")
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        with naming_the_model("judge model", pretrained, "judge_args pretrained"):
            model: Any = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch_dtype)
        if adapters:
            from peft import PeftModel

            names = list(adapters)
            with naming_the_model("judge adapters", ", ".join(map(str, adapters.values())), "judge_args adapters"):
                model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
                for name in names[1:]:
                    model.load_adapter(adapters[name], adapter_name=name)
        self.model = model.to(self.device).eval()
        self.adapters = set(adapters or {})
        self.eos_ids = sorted(
            {self.tokenizer.eos_token_id}
            | {i for s in self.stop_strings if (i := self.tokenizer.convert_tokens_to_ids(s)) is not None}
            - {self.tokenizer.unk_token_id}
        )
        self._label_ids: list[int] | None = None
        self.tokens = UsageMeter()

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def render(self, request: JudgeRequest) -> list[int]:
        """Token ids of the request under the judge's own chat template (BOS exactly once)."""
        return prompt_ids(self.tokenizer, request)

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str]:
        by_adapter: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            if request.adapter and request.adapter not in self.adapters:
                raise KeyError(f"judge has no adapter {request.adapter!r}; loaded: {sorted(self.adapters)}")
            by_adapter[request.adapter].append(index)
        replies: list[str] = [""] * len(requests)
        for adapter, indices in by_adapter.items():
            encoded = {i: self.render(requests[i]) for i in indices}
            order = sorted(indices, key=lambda i: -len(encoded[i]))
            with self._adapter(adapter):
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    outputs, generated = self._run([encoded[i] for i in batch])
                    for i, reply in zip(batch, outputs, strict=True):
                        replies[i] = reply
                    self.tokens.record(TokenCount(len(encoded[i]), n) for i, n in zip(batch, generated, strict=True))
        return replies

    def _adapter(self, name: str):
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if not name:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def _run(self, batch: list[list[int]]) -> tuple[list[str], list[int]]:
        """The replies, and how many tokens each one generated (logits mode: the one label token read)."""
        import torch

        if self.score_mode == "logits":
            return self._read_labels(batch), [1] * len(batch)
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            generated = self.model.generate(
                **padded,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = generated[:, padded["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [cut_at(text, self.stop_strings) for text in texts], [
            generated_length(row, self.eos_ids) for row in new_tokens.tolist()
        ]

    def _read_labels(self, batch: list[list[int]]) -> list[str]:
        """The most likely score label after each prompt, from one forward pass.

        Right-padded with no attention mask: under causal attention no real token sees the pads that
        follow it, so each row's last real position is exact, and without a mask the attention kernel
        takes its fused causal path (on CPU, 2.8× faster than the masked one at 2,300-token prompts).
        Only the distinct last positions of the batch go through the LM head."""
        import torch

        lengths = torch.tensor([len(ids) for ids in batch])
        input_ids = torch.full((len(batch), int(lengths.max())), self.tokenizer.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        last = lengths - 1
        keep = torch.unique(last)  # sorted
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device), logits_to_keep=keep.to(self.device)).logits
        rows = logits[torch.arange(len(batch)), torch.searchsorted(keep, last).to(logits.device)]
        best = rows[:, self._label_token_ids(batch[0])].argmax(dim=-1).tolist()
        return [self.labels[b] for b in best]

    def _label_token_ids(self, prompt: list[int]) -> list[int]:
        if self._label_ids is None:
            self._label_ids = label_token_ids(self.tokenizer, prompt, self.labels)
        return self._label_ids
