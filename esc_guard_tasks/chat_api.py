"""An OpenAI-compatible chat-completions client with bounded retries, for every API path of the package.

Why one client: the judges (ESC-RANK behind ``vllm serve``, an LLM rubric judge, the MLLMGuard
LLM judge) and lm-eval's chat-completions backends as supporter or role-player
(``esc_guard_tasks.harness.lm_eval_api``) must all survive the same faults the same way.

Requests run concurrently (``num_concurrent`` threads, order kept). Retried, with exponential
backoff and equal jitter (``retry_backoff`` × 2^attempt, capped at ``max_retry_wait``): HTTP
429/408/409/5xx, timeouts, dropped connections, and replies that are not a usable chat
completion (not JSON, no ``choices[0].message.content`` string). ``Retry-After`` /
``retry-after-ms`` is honoured up to ``max_retry_wait``. Other 4xx answers (bad model name, bad
key) fail at once. After ``1 + max_retries`` attempts a request fails for good with a
:class:`ChatAPIError` naming the endpoint, the model and the attempts made; the other requests
of the batch stop at their next attempt. Header values (the API key) are scrubbed from every
error and log message. Every answered request's ``usage`` block is counted in the client's ``tokens``
meter (a reply without one is counted as sent but unmeasured).
"""

from __future__ import annotations

import email.utils
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import requests

from esc_guard_tasks.usage import TokenCount, UsageMeter

log = logging.getLogger("lm_eval.esc_guard_tasks")

CHAT_PATH = "/chat/completions"
RETRY_STATUSES = frozenset({408, 409, 429})
RETRY_EXCEPTIONS = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
# Header values shorter than this are not scrubbed (they are not secrets and would mangle messages).
MIN_SECRET_LENGTH = 8


class ChatAPIError(RuntimeError):
    """A request failed for good: who asked, which endpoint, which model, after how many attempts, and why."""

    def __init__(self, who: str, endpoint: str, model: str, attempts: int, last_error: str):
        self.who, self.endpoint, self.model, self.attempts, self.last_error = who, endpoint, model, attempts, last_error
        tries = f"{attempts} attempt" + ("" if attempts == 1 else "s")
        super().__init__(f"{who} endpoint {endpoint} (model {model!r}) failed after {tries}: {last_error}")


class _RetryableError(Exception):
    """One attempt failed in a way that another attempt may fix; ``wait`` is the server's Retry-After."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class _FatalError(Exception):
    """One attempt failed in a way that retrying cannot fix (4xx other than 408/409/429, bad URL)."""


def chat_endpoint(base_url: str, who: str = "chat API") -> str:
    """``http://host:8000/v1`` or ``…/v1/chat/completions`` → the chat-completions URL (one cache identity)."""
    url = str(base_url).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{who} base_url must be an http(s) URL, got {base_url!r}")
    return url if url.endswith(CHAT_PATH) else url + CHAT_PATH


def without_credentials(url: str) -> str:
    """The URL with any ``user:password@`` removed, for identity, logs and errors."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


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


def message_content(body: Any) -> str | None:
    """``choices[0].message.content`` when it is a string, else None (not a usable chat completion)."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class Completion(NamedTuple):
    """One answered request: the reply text, and its tokens from the server's ``usage`` (None: not given)."""

    text: str
    tokens: TokenCount | None


class ChatCompletionsClient:
    """POSTs JSON payloads to one chat-completions endpoint; ``reply(body)`` turns a response into text.

    ``reply`` returns None for a body that is not a usable completion (retried like a 5xx);
    the default reads ``choices[0].message.content``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        who: str,
        headers: Mapping[str, str] | None = None,
        num_concurrent: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        retry_backoff: float = 1.0,
        max_retry_wait: float = 60.0,
        verify: bool | str = True,
        reply: Callable[[Any], str | None] = message_content,
    ):
        self.endpoint = endpoint
        self.who = who
        self.num_concurrent = int(num_concurrent)
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.retry_backoff = float(retry_backoff)
        self.max_retry_wait = float(max_retry_wait)
        for name, value, low in (("num_concurrent", self.num_concurrent, 1), ("max_retries", self.max_retries, 0)):
            if value < low:
                raise ValueError(f"{who} {name} must be at least {low}, got {value}")
        if self.timeout <= 0 or self.retry_backoff < 0 or self.max_retry_wait < 0:
            raise ValueError(f"{who} timeout must be positive, retry_backoff and max_retry_wait not negative")
        self.shown_endpoint = without_credentials(endpoint)
        self._headers = {"Content-Type": "application/json", **dict(headers or {})}
        self._secrets = sorted(
            {v for k, v in self._headers.items() if k.lower() != "content-type" and len(v) >= MIN_SECRET_LENGTH}
            | {v.split(" ", 1)[1] for v in self._headers.values() if v.startswith("Bearer ") and len(v) > 7},
            key=len,
            reverse=True,
        )
        self._verify = verify
        self._reply = reply
        self._sessions: queue.LifoQueue[requests.Session] = queue.LifoQueue()
        self._random = random.Random()
        self.tokens = UsageMeter()

    def complete(self, payloads: Sequence[Mapping[str, Any]]) -> list[str]:
        """One reply text per payload, in order; raises :class:`ChatAPIError` when one fails for good."""
        return [c.text for c in self.complete_counted(payloads)]

    def complete_counted(self, payloads: Sequence[Mapping[str, Any]]) -> list[Completion]:
        """One reply per payload with its token count, in order (what ``complete`` returns the text of)."""
        if not payloads:
            return []
        abort = threading.Event()
        pool = ThreadPoolExecutor(
            max_workers=min(self.num_concurrent, len(payloads)), thread_name_prefix=self.who.replace(" ", "-")
        )
        try:
            futures = [pool.submit(self._complete_one, p, abort) for p in payloads]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [error for f in futures if f in done and (error := f.exception()) is not None]
            if failed:
                raise failed[0]
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

    def _complete_one(self, payload: Mapping[str, Any], abort: threading.Event) -> Completion:
        model = str(payload.get("model", ""))
        attempts, last = 0, "not attempted"
        for attempt in range(self.max_retries + 1):
            if abort.is_set():
                break
            attempts = attempt + 1
            try:
                completion = self._post(payload)
                self.tokens.record([completion.tokens])
                return completion
            except _FatalError as err:
                raise ChatAPIError(self.who, self.shown_endpoint, model, attempts, str(err)) from None
            except _RetryableError as err:
                last = str(err)
                if attempt == self.max_retries:
                    break
                delay = self._delay(attempt, err.wait)
                log.warning(
                    "%s request to %s (model %r) failed, attempt %d of %d: %s; retrying in %.2f s",
                    self.who[:1].upper() + self.who[1:],
                    self.shown_endpoint,
                    model,
                    attempts,
                    self.max_retries + 1,
                    last,
                    delay,
                )
                if abort.wait(delay):
                    break
        raise ChatAPIError(self.who, self.shown_endpoint, model, attempts, last)

    def _delay(self, attempt: int, server_wait: float | None) -> float:
        """Retry-After when the server gives one, else exponential backoff with equal jitter; both capped."""
        if server_wait is not None:
            return min(self.max_retry_wait, server_wait)
        ceiling = min(self.max_retry_wait, self.retry_backoff * 2**attempt)
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _post(self, payload: Mapping[str, Any]) -> Completion:
        session = self._session()
        try:
            response = session.post(
                self.endpoint, json=payload, headers=self._headers, timeout=self.timeout, verify=self._verify
            )
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
        text = self._reply(body)
        if text is None:
            raise _RetryableError(self._scrub(f"response has no choices[0].message.content: {str(body)[:200]}"))
        return Completion(text, TokenCount.from_usage_block(body))

    def _session(self) -> requests.Session:
        try:
            return self._sessions.get_nowait()
        except queue.Empty:
            return requests.Session()  # honours the usual proxy / CA-bundle environment variables

    def _scrub(self, text: str) -> str:
        """Remove header values (the API key) from text a server or library produced (some servers echo it)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _error_text(response: requests.Response) -> str:
    """The server's error message, short: OpenAI-style ``error.message``, else the start of the body."""
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error") or body
    except (ValueError, AttributeError, KeyError, TypeError):
        message = response.text
    return str(message)[:300]
