"""lm-eval's chat-completions backends as speakers, with the package's bounded retries.

Why this exists: lm-eval 0.4.13's ``TemplateAPI.generate_until`` (``local-chat-completions``,
``openai-chat-completions``) turns a 200 reply without ``choices`` or with ``content: null``
into an empty string (a warning is all that is left: the dialogue silently gets an empty
turn), fails with an unrelated ``zip()`` error on ``choices: []``, retries every HTTP error
including 400/401/404 the same three times with un-jittered backoff, ignores
``Retry-After``, and after the last attempt raises the raw ``requests``/``aiohttp`` error,
which does not say how often it tried. For these backends the bridge sends the requests
itself, through :class:`~esc_guard_tasks.chat_api.ChatCompletionsClient`: the request body is
still built by the backend's own ``_create_payload`` (the wire format is lm-eval's) and the
reply text by its own ``parse_generations``; lm-eval itself is not patched.

The backend's ``--model_args`` keep their meaning where they exist: ``num_concurrent``,
``timeout`` (per attempt), ``verify_certificate`` / ``ca_cert_path``; ``max_retries`` is the
number of retries after the first attempt. Backoff: 1 s × 2^attempt, equal jitter, at most 60 s.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from esc_guard_tasks.chat_api import ChatCompletionsClient, Completion, message_content

RETRY_BACKOFF = 1.0
MAX_RETRY_WAIT = 60.0


def is_chat_api(lm: Any) -> bool:
    """Whether ``lm`` is one of lm-eval's chat-completions backends (what this module takes over)."""
    try:
        from lm_eval.models.openai_completions import LocalChatCompletion
    except ImportError:  # lm-eval without its API extras
        return False
    return isinstance(lm, LocalChatCompletion)


class ChatAPISpeaker:
    """``generate_until`` for an lm-eval chat-completions LM, one request per context, order kept."""

    def __init__(self, lm: Any):
        self.lm = lm
        verify = lm.ca_cert_path if lm.verify_certificate and lm.ca_cert_path else bool(lm.verify_certificate)
        self.client = ChatCompletionsClient(
            lm.base_url,
            who="chat-completions",
            headers=lm.header,
            num_concurrent=max(1, lm._concurrent),
            max_retries=max(0, lm.max_retries),
            timeout=lm.timeout,
            retry_backoff=RETRY_BACKOFF,
            max_retry_wait=MAX_RETRY_WAIT,
            verify=verify,
            reply=self._reply,
        )

    def _reply(self, body: Any) -> str | None:
        """The backend's own post-processing (e.g. ``think_end_token``) of a usable completion, else None."""
        if message_content(body) is None:
            return None
        return self.lm.parse_generations(outputs=body)[0]

    def generate_until(self, requests: Sequence[Any]) -> list[Completion]:
        """Each request's reply with the server's token count (its ``usage`` block), in order."""
        lm = self.lm
        payloads = [
            lm._create_payload(
                lm.create_message([context]),
                generate=True,
                gen_kwargs=copy.deepcopy(kwargs),
                seed=lm._seed,
                eos=lm.eos_string,
            )
            for context, kwargs in (r.args[:2] for r in requests)
        ]
        return self.client.complete_counted(payloads)
