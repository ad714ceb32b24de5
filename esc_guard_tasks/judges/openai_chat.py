"""Judge behind any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp, OpenAI, …).

Why: the 7B ESC-RANK judge (or a big rubric model) is best served once, on a GPU box,
and shared; e.g. ``vllm serve internlm/internlm2-chat-7b --enable-lora --lora-modules
fluency_en=…/fluency_en fluency=…/fluency …`` exposes every ESC-RANK adapter as a model
name, so the default model template ``{adapter}`` asks each dimension's adapter. The
request's messages are sent as they are (for ESC-RANK: InternLM2's default system prompt
+ the query), greedily (temperature 0), and the reply text comes back unparsed.

Requests run concurrently (``num_concurrent`` threads, order kept) with bounded retries:
exponential backoff with jitter on 429/408/409/5xx, timeouts, dropped connections and
replies that are not a chat completion; ``Retry-After`` is honoured up to
``max_retry_wait``. Other 4xx answers (bad model name, bad key) fail at once. The API key
comes from the environment only and never appears in ``identity()``, logs or errors.
"""

from __future__ import annotations

import email.utils
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from esc_guard_tasks.judges.base import JudgeRequest

log = logging.getLogger("lm_eval.esc_guard_tasks")

API_KEY_ENV = ("ESC_EVAL_JUDGE_API_KEY", "OPENAI_API_KEY")
CHAT_PATH = "/chat/completions"
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
RETRY_STATUSES = frozenset({408, 409, 429})
RETRY_EXCEPTIONS = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class JudgeAPIError(RuntimeError):
    """A judge request failed for good: which endpoint, which model, after how many attempts, and why."""

    def __init__(self, endpoint: str, model: str, attempts: int, last_error: str):
        self.endpoint, self.model, self.attempts, self.last_error = endpoint, model, attempts, last_error
        tries = f"{attempts} attempt" + ("" if attempts == 1 else "s")
        super().__init__(f"judge endpoint {endpoint} (model {model!r}) failed after {tries}: {last_error}")


class _RetryableError(Exception):
    """One attempt failed in a way that another attempt may fix; ``wait`` is the server's Retry-After."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class _FatalError(Exception):
    """One attempt failed in a way that retrying cannot fix (4xx other than 408/409/429, bad URL)."""


def chat_endpoint(base_url: str) -> str:
    """``http://host:8000/v1`` or ``…/v1/chat/completions`` → the chat-completions URL (one cache identity)."""
    url = str(base_url).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"judge base_url must be an http(s) URL, got {base_url!r}")
    return url if url.endswith(CHAT_PATH) else url + CHAT_PATH


def _without_credentials(url: str) -> str:
    """The URL with any ``user:password@`` removed, for identity, logs and errors."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``ESC_EVAL_JUDGE_API_KEY``, else ``OPENAI_API_KEY``, else None (no Authorization header)."""
    environ = os.environ if environ is None else environ
    for name in API_KEY_ENV:
        if environ.get(name):
            return environ[name]
    return None


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The server's requested wait: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
        self.endpoint = chat_endpoint(base_url)
        self.model = str(model)
        self.num_concurrent = int(num_concurrent)
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.max_tokens = int(max_tokens)
        self.retry_backoff = float(retry_backoff)
        self.max_retry_wait = float(max_retry_wait)
        for name, value, low in (
            ("num_concurrent", self.num_concurrent, 1),
            ("max_retries", self.max_retries, 0),
            ("max_tokens", self.max_tokens, 1),
        ):
            if value < low:
                raise ValueError(f"judge {name} must be at least {low}, got {value}")
        if self.timeout <= 0 or self.retry_backoff < 0 or self.max_retry_wait < 0:
            raise ValueError("judge timeout must be positive, retry_backoff and max_retry_wait not negative")
        self._shown_endpoint = _without_credentials(self.endpoint)
        self._identity = {
            "backend": "openai",
            "base_url": self._shown_endpoint,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": 0,
        } | dict(identity or {})
        self._api_key = api_key_from_env()
        self._sessions: queue.LifoQueue[requests.Session] = queue.LifoQueue()
        self._random = random.Random()

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
        log.info("Judging %d requests at %s (%d concurrent)", len(payloads), self._shown_endpoint, self.num_concurrent)
        abort = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.num_concurrent, len(payloads)), thread_name_prefix="judge")
        try:
            futures = [pool.submit(self._complete_one, p, abort) for p in payloads]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                raise failed[0].exception()
            return [f.result() for f in futures]
        finally:
            abort.set()  # after a failure (or Ctrl-C) the other workers stop at their next attempt
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        while True:
            try:
                self._sessions.get_nowait().close()
            except queue.Empty:
                return

    # -- one request -----------------------------------------------------------------------

    def _complete_one(self, payload: dict[str, Any], abort: threading.Event) -> str:
        attempts, last = 0, "not attempted"
        for attempt in range(self.max_retries + 1):
            if abort.is_set():
                break
            attempts = attempt + 1
            try:
                return self._post(payload)
            except _FatalError as err:
                raise JudgeAPIError(self._shown_endpoint, payload["model"], attempts, str(err)) from None
            except _RetryableError as err:
                last = str(err)
                if attempt == self.max_retries:
                    break
                delay = self._delay(attempt, err.wait)
                log.warning(
                    "Judge request to %s (model %r) failed, attempt %d of %d: %s; retrying in %.2f s",
                    self._shown_endpoint,
                    payload["model"],
                    attempts,
                    self.max_retries + 1,
                    last,
                    delay,
                )
                if abort.wait(delay):
                    break
        raise JudgeAPIError(self._shown_endpoint, payload["model"], attempts, last)

    def _delay(self, attempt: int, server_wait: float | None) -> float:
        """Retry-After when the server gives one, else exponential backoff with equal jitter; both capped."""
        if server_wait is not None:
            return min(self.max_retry_wait, server_wait)
        ceiling = min(self.max_retry_wait, self.retry_backoff * 2**attempt)
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _post(self, payload: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        session = self._session()
        try:
            response = session.post(self.endpoint, json=payload, headers=headers, timeout=self.timeout)
        except RETRY_EXCEPTIONS as err:
            session.close()  # the connection may be half-dead; start afresh
            raise _RetryableError(self._scrub(f"{type(err).__name__}: {err}")) from None
        except requests.RequestException as err:
            raise _FatalError(self._scrub(f"{type(err).__name__}: {err}")) from None
        else:
            self._sessions.put(session)
        with response:
            status = response.status_code
            if status != 200:
                message = self._scrub(f"HTTP {status}: {_error_text(response)}")
                if status in RETRY_STATUSES or status >= 500:
                    raise _RetryableError(message, retry_after_seconds(response.headers))
                raise _FatalError(message)
            try:
                body = response.json()
            except ValueError as err:
                raise _RetryableError(f"response is not JSON ({err})") from None
        content = _content(body)
        if content is None:
            raise _RetryableError(self._scrub(f"response has no choices[0].message.content: {str(body)[:200]}"))
        return content

    def _session(self) -> requests.Session:
        try:
            return self._sessions.get_nowait()
        except queue.Empty:
            return requests.Session()  # honours the usual proxy / CA-bundle environment variables

    def _scrub(self, text: str) -> str:
        """Remove the API key from text a server or library produced (some servers echo it)."""
        return text.replace(self._api_key, "***") if self._api_key else text


def _content(body: Any) -> str | None:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _error_text(response: requests.Response) -> str:
    """The server's error message, short: OpenAI-style ``error.message``, else the start of the body."""
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error") or body
    except (ValueError, AttributeError, KeyError, TypeError):
        message = response.text
    return str(message)[:300]
