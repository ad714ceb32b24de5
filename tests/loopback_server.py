"""A tiny OpenAI-compatible chat-completions server on 127.0.0.1, for offline tests.

Why it exists: API backends (lm-eval's ``local-chat-completions`` as supporter, role-player
or judge) must be tested end to end, through their real HTTP payloads, without network
access or a real model. This server records every request body exactly as the client sent
it (in arrival order, thread-safe) and answers with whatever the test's ``reply`` function
decides, so a test can both script the conversation and inspect what each model was shown.

Usage::

    with LoopbackChatServer(lambda body: "hello") as server:
        run_something(base_url=server.chat_url)
    server.chat_bodies()  # every POST /v1/chat/completions body, in arrival order

``reply`` receives the parsed JSON body and returns either the assistant's text (wrapped
into a standard chat-completion response), a ``dict`` sent verbatim as the JSON response
(malformed or unusual responses), or ``bytes`` sent verbatim as a 200 body (e.g. truncated
JSON). It may raise ``LoopbackHTTPError`` to answer with an HTTP error status, or
``LoopbackDroppedConnectionError`` to close the connection without answering (fault injection); any
other exception becomes a 500 and is kept in ``errors``.
A body whose ``messages`` is not a list of objects is recorded, then rejected with a 400, as
the OpenAI API does, without calling ``reply``.
Only loopback is ever bound; the port is ephemeral; the server stops on context exit.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "CHAT_PATH",
    "MODELS_PATH",
    "LoopbackChatServer",
    "LoopbackDroppedConnectionError",
    "LoopbackHTTPError",
    "RecordedRequest",
    "Reply",
]

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

Reply = Callable[[dict[str, Any]], "str | bytes | dict[str, Any]"]


class LoopbackHTTPError(Exception):
    """Raise from a ``reply`` function to answer with this HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str = "injected failure"):
        super().__init__(message)
        self.status = status
        self.message = message


class LoopbackDroppedConnectionError(Exception):
    """Raise from a ``reply`` function to close the connection without sending any response."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received: method, path, the parsed JSON body (``None`` when there is none), headers."""

    method: str
    path: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def chat_completion(body: dict[str, Any], content: str) -> dict[str, Any]:
    """A standard (non-streaming) chat-completion response carrying ``content``."""
    prompt_words = sum(
        len(str(m.get("content", "")).split()) for m in body.get("messages") or [] if isinstance(m, dict)
    )
    completion_words = len(content.split())
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "loopback"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_words,
            "total_tokens": prompt_words + completion_words,
        },
    }


class LoopbackChatServer:
    """OpenAI-compatible chat-completions server on 127.0.0.1:<ephemeral>, run in a background thread."""

    def __init__(self, reply: Reply, *, models: Sequence[str] = ("loopback",)):
        self.reply = reply
        self.models = list(models)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._errors: list[BaseException] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LoopbackChatServer:
        if self._httpd is not None:
            raise RuntimeError("loopback server already started")
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="loopback-chat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=10)
        self._httpd = self._thread = None

    def __enter__(self) -> LoopbackChatServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("loopback server is not running")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1`` (what OpenAI-style clients call the base URL)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_url(self) -> str:
        """The full chat-completions endpoint (what lm-eval's ``base_url`` model arg expects)."""
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"

    # -- what was received -----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    def chat_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every ``POST /v1/chat/completions``, in arrival order."""
        return [r.body for r in self.requests if r.method == "POST" and r.path == CHAT_PATH]

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by ``reply`` (other than ``LoopbackHTTPError``); each was answered with a 500."""
        with self._lock:
            return list(self._errors)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _record_error(self, error: BaseException) -> None:
        with self._lock:
            self._errors.append(error)


def _handler_for(server: LoopbackChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            pass  # keep test output clean

        def _send_json(self, status: int, payload: Any) -> None:
            self._send_raw(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"))

        def _send_raw(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self._send_json(status, {"error": {"message": message, "type": kind, "code": status}})

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            path = self.path.split("?", 1)[0]
            server._record(RecordedRequest("GET", path, None))
            if path != MODELS_PATH:
                self._send_error(404, f"no route for GET {path}")
                return
            models = [{"id": m, "object": "model", "created": 0, "owned_by": "loopback"} for m in server.models]
            self._send_json(200, {"object": "list", "data": models})

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            path = self.path.split("?", 1)[0]
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw.decode("utf-8")) if raw else None
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                server._record(RecordedRequest("POST", path, raw.decode("utf-8", "replace")))
                self._send_error(400, f"request body is not JSON: {err}")
                return
            server._record(RecordedRequest("POST", path, body, dict(self.headers.items())))
            if path != CHAT_PATH:
                self._send_error(404, f"no route for POST {path}")
                return
            if not isinstance(body, dict):
                self._send_error(400, "request body must be a JSON object")
                return
            messages = body.get("messages")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                self._send_error(400, "'messages' must be an array of message objects")  # as OpenAI answers
                return
            try:
                answer = server.reply(body)
            except LoopbackHTTPError as err:
                self._send_error(err.status, err.message, "injected_error")
                return
            except LoopbackDroppedConnectionError:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            except Exception as err:  # noqa: BLE001 - a broken reply function must surface in the test, not hang it
                server._record_error(err)
                self._send_error(500, f"reply function raised {type(err).__name__}: {err}", "server_error")
                return
            if isinstance(answer, bytes):
                self._send_raw(200, answer)
                return
            self._send_json(200, answer if isinstance(answer, dict) else chat_completion(body, str(answer)))

    return Handler
