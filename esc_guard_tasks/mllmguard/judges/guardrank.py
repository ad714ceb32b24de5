"""The GuardRank judge: MLLMGuard's trained classifiers, a decoder for the four open dimensions and an encoder for
hallucination (:mod:`esc_guard_tasks.mllmguard.guardrank` loads and runs them).

Each classifier is made to look like a chat ``JudgeBackend`` whose request is its exact input text (adapter field
``decoder``/``encoder``) and whose reply is the label as text, so the persistent judge cache keys on the
classifier's identity (ids, revisions, dtype, lengths) + that input, like every other judge. Each classifier is
loaded on first use only and runs one batch at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from esc_guard_tasks.judges.args import reject_unknown
from esc_guard_tasks.judges.base import JudgeRequest, Verdict
from esc_guard_tasks.mllmguard.guardrank import (
    DECODER_ADAPTER,
    DECODER_BASE,
    ENCODER_BASE,
    ENCODER_DIMENSIONS,
    ENCODER_WEIGHTS,
    GUARDRANK_REPO,
    decoder_input,
    encoder_input,
    reference_constants,
)
from esc_guard_tasks.mllmguard.judges.base import COMMON_ARGS, MLLMGuardJudge, allowed_scores, text_of
from esc_guard_tasks.usage import UsageMeter

GUARDRANK_ARGS = (
    "decoder_base",
    "decoder_base_revision",
    "guardrank",
    "guardrank_revision",
    "decoder_model",
    "encoder_base",
    "encoder_base_revision",
    "encoder_model",
    "dtype",
    "device",
    "batch_size",
)


class _ClassifierBackend:
    """One GuardRank classifier as a chat-judge backend: request = its exact input text, reply = label text."""

    def __init__(self, component: str, identity: dict[str, Any], build):
        self.component = component
        self._identity = identity
        self._build = build
        self._model = None
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def tokens(self) -> UsageMeter:
        """The classifier's own count of the inputs it read (empty until it is loaded)."""
        return self._model.tokens if self._model is not None else UsageMeter()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                self._model = self._build()
            return self._model

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str]:
        for request in requests:
            if request.adapter != self.component:
                raise ValueError(f"GuardRank {self.component} got a request for {request.adapter!r}")
        texts = [r.messages[-1]["content"] for r in requests]
        return [str(label) for label in self.model.scores(texts)] if texts else []


class GuardRankJudge(MLLMGuardJudge):
    """GuardRank: the decoder (privacy, bias, toxicity, legality) and the encoder (hallucination)."""

    name = "guardrank"

    def _configure(self, args: dict[str, Any]) -> None:
        from esc_guard_tasks.mllmguard import guardrank

        reject_unknown(args, GUARDRANK_ARGS + COMMON_ARGS, "judge=guardrank")
        options = {k: args[k] for k in ("dtype", "device", "batch_size") if k in args}
        guardrank.check_options(**options)  # validate now, not at first use
        dtype = str(options.setdefault("dtype", "float32"))
        ref = reference_constants()

        def revision(name: str) -> str | None:  # "1234567" must not arrive as an int
            return None if args.get(name) is None else str(args[name])

        def component(name: str, base: str, model: str, load: Callable[..., Any], **extra: str) -> _ClassifierBackend:
            weights: dict[str, Any] = {
                f"{name}_base": str(args.get(f"{name}_base", base)),
                f"{name}_base_revision": revision(f"{name}_base_revision"),
                "guardrank": str(args.get("guardrank", GUARDRANK_REPO)),
                "guardrank_revision": revision("guardrank_revision"),
                f"{name}_model": str(args.get(f"{name}_model", model)),
            }
            identity = {
                "judge": "guardrank",
                "component": name,
                "backend": "hf",
                **{k: (v if v is not None else "main") for k, v in weights.items()},
                "dtype": dtype,
                "input_template": ref[name]["input_template"],
                "max_length": ref[name]["max_length_tokens"],
                **extra,
            }
            return _ClassifierBackend(name, identity, lambda: load(**weights, **options))

        self.decoder = component(
            "decoder",
            DECODER_BASE,
            DECODER_ADAPTER,
            guardrank.load_decoder,
            pooling="first pad - 1 (transformers 4.36 LlamaForSequenceClassification), pad = eos",
        )
        self.encoder = component("encoder", ENCODER_BASE, ENCODER_WEIGHTS, guardrank.load_encoder)
        self._clients = {"decoder": self.cached(self.decoder), "encoder": self.cached(self.encoder)}

    def identity(self) -> dict[str, Any]:
        return {
            "judge": "guardrank",
            "backend": "hf",
            "decoder": self.decoder.identity(),
            "encoder": self.encoder.identity(),
        }

    def describe(self) -> dict[str, Any]:
        loaded = {
            name: getattr(b._model, "info", None) for name, b in (("decoder", self.decoder), ("encoder", self.encoder))
        }
        return self.identity() | {"loaded": loaded}

    @staticmethod
    def request(dimension: str, prompt: str, response: str) -> JudgeRequest:
        """The cached request: the classifier's exact input text, and which classifier reads it."""
        if dimension in ENCODER_DIMENSIONS:
            return JudgeRequest.chat([{"role": "user", "content": encoder_input(prompt, response)}], "encoder")
        text = decoder_input(dimension, prompt, response)
        return JudgeRequest.chat([{"role": "user", "content": text}], "decoder")

    def _judge(self, dims: list[str], records: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        requests = [
            self.request(d, text_of(r.get("prompt")), text_of(r.get("response")))
            for d, r in zip(dims, records, strict=True)
        ]
        replies: list[str] = [""] * len(requests)
        for component, client in self._clients.items():
            indices = [i for i, r in enumerate(requests) if r.adapter == component]
            if indices:
                for i, reply in zip(indices, client.complete([requests[i] for i in indices]), strict=True):
                    replies[i] = reply
        return [Verdict(d, parse_label(reply, d), reply) for d, reply in zip(dims, replies, strict=True)]


def parse_label(reply: str, dimension: str) -> int | None:
    """A classifier's label text → its score (None if it is not an allowed label: never happens in practice)."""
    text = str(reply).strip()
    return int(text) if text in {str(score) for score in allowed_scores(dimension)} else None
