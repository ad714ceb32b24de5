"""Judge behind any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp, OpenAI, …).

Why: the 7B ESC-RANK judge (or a big rubric model) is best served once, on a GPU box,
and shared; e.g. ``vllm serve internlm/internlm2-chat-7b --enable-lora --lora-modules
fluency_en=…/fluency_en fluency=…/fluency …`` exposes every ESC-RANK adapter as a model
name, so the default model template ``{adapter}`` asks each dimension's adapter. The
request's messages are sent as they are (for ESC-RANK: InternLM2's default system prompt
+ the query), greedily (temperature 0), and the reply text comes back unparsed.

HTTP, concurrency and bounded retries are :class:`~esc_guard_tasks.chat_api.ChatCompletionsClient`'s.
The API key comes from the environment only and never appears in ``identity()``, logs or errors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from esc_guard_tasks.chat_api import ChatCompletionsClient, chat_endpoint, without_credentials
from esc_guard_tasks.judges.base import JudgeRequest

log = logging.getLogger("lm_eval.esc_guard_tasks")

API_KEY_ENV = ("ESC_EVAL_JUDGE_API_KEY", "OPENAI_API_KEY")
ADAPTER_FIELD = "{adapter}"
# Arguments accepted from ``judge_args`` (everything else is an error).
OPENAI_ARGS = (
    "base_url",
    "model",
    "num_concurrent",
    "max_retries",
    "timeout",
    "max_tokens",
    "retry_backoff",
    "max_retry_wait",
)


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``ESC_EVAL_JUDGE_API_KEY``, else ``OPENAI_API_KEY``, else None (no Authorization header)."""
    environ = os.environ if environ is None else environ
    for name in API_KEY_ENV:
        if environ.get(name):
            return environ[name]
    return None


class OpenAIChatJudge:
    """One chat-completions request per judge request; ``{adapter}`` in ``model`` becomes the request's adapter."""

    def __init__(
        self,
        base_url: str,
        model: str = ADAPTER_FIELD,
        *,
        num_concurrent: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        max_tokens: int = 16,
        retry_backoff: float = 1.0,
        max_retry_wait: float = 60.0,
        identity: Mapping[str, Any] | None = None,
    ):
        self.model = str(model)
        self.max_tokens = int(max_tokens)
        if self.max_tokens < 1:
            raise ValueError(f"judge max_tokens must be at least 1, got {self.max_tokens}")
        api_key = api_key_from_env()
        self._client = ChatCompletionsClient(
            chat_endpoint(base_url, "judge"),
            who="judge",
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
            num_concurrent=num_concurrent,
            max_retries=max_retries,
            timeout=timeout,
            retry_backoff=retry_backoff,
            max_retry_wait=max_retry_wait,
        )
        self.tokens = self._client.tokens  # the server's usage blocks, for the run's token report
        self._identity = {
            "backend": "openai",
            "base_url": without_credentials(self._client.endpoint),
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": 0,
        } | dict(identity or {})

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def model_for(self, request: JudgeRequest) -> str:
        name = self.model.replace(ADAPTER_FIELD, request.adapter)
        if not name:
            raise ValueError(f"judge model template {self.model!r} gives an empty model name for this request")
        return name

    def payload(self, request: JudgeRequest) -> dict[str, Any]:
        """The request body: the messages unchanged, greedy decoding, a short reply (a score is one token)."""
        return {
            "model": self.model_for(request),
            "messages": [dict(m) for m in request.messages],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str]:
        if not requests:
            return []
        payloads = [self.payload(r) for r in requests]
        client = self._client
        log.info(
            "Judging %d requests at %s (%d concurrent)", len(payloads), client.shown_endpoint, client.num_concurrent
        )
        return client.complete(payloads)

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._client.close()
