"""lm-eval models as dialogue speakers.

``LMEvalChatModel`` turns any lm-eval LM (the user's ``--model`` as supporter, or a
role-player built from lm-eval's own model registry) into the engine's ``ChatModel``:
each history is rendered by that model's own backend (``lm.apply_chat_template``:
a templated string for hf/vLLM, a JSON message list for chat-completions APIs), and a
whole batch goes through one ``generate_until`` call.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import random
import zlib
from collections.abc import Sequence
from typing import Any, Literal

from esc_guard_tasks.esc_eval.protocol import Message
from esc_guard_tasks.esc_eval.settings import ESCSettings, parse_kv
from esc_guard_tasks.harness.lm_eval_api import ChatAPISpeaker, is_chat_api
from esc_guard_tasks.harness.lm_eval_context import tokenizer_counts, truncated_prompts
from esc_guard_tasks.hub import naming_the_model
from esc_guard_tasks.usage import TokenCount

log = logging.getLogger("lm_eval.esc_guard_tasks")

# Backends whose generate_until accepts a per-request ``seed`` generation kwarg
# (vLLM SamplingParams; OpenAI-compatible payloads). Others are seeded globally.
PER_REQUEST_SEED_BACKENDS = frozenset(
    {"vllm", "local-completions", "local-chat-completions", "openai-completions", "openai-chat-completions"}
)
HF_BACKENDS = frozenset({"hf", "hf-auto", "huggingface"})
KEEP_LOADED_BACKENDS = frozenset({"vllm"})
PLAIN_SPEAKER_TAGS = {"system": "", "user": "User: ", "assistant": "Assistant: "}


def plain_transcript(messages: Sequence[Message]) -> str:
    """Fallback context for base models (no chat template): a plain User/Assistant script."""
    lines = []
    for message in messages:
        if message["role"] == "system":
            lines.append(message["content"] + "\n")
        else:
            lines.append(PLAIN_SPEAKER_TAGS[message["role"]] + message["content"])
    return "\n".join(lines) + "\nAssistant:"


class LMEvalChatModel:
    """A ``ChatModel`` over an lm-eval LM: one ``generate_until`` call per batch of histories.

    ``seeding`` says how the engine's per-dialogue, per-turn seeds reach the backend:
    ``"request"`` as a ``seed`` generation kwarg of each request (vLLM, OpenAI-compatible
    APIs), ``"global"`` by seeding the in-process RNGs (hf) before the call with a seed
    derived from the whole batch's seeds, so the same batch always samples the same replies.
    """

    def __init__(
        self,
        lm: Any,
        gen_kwargs: dict[str, Any],
        use_chat_template: bool = True,
        seeding: Literal["request", "global"] = "global",
    ):
        self.lm = lm
        self.gen_kwargs = dict(gen_kwargs)
        self.use_chat_template = use_chat_template
        self.seeding = seeding
        if not use_chat_template:
            until = list(self.gen_kwargs.get("until") or [])
            self.gen_kwargs["until"] = [*until, "\nUser:"]
        self._quiet = "disable_tqdm" in inspect.signature(lm.generate_until).parameters
        # per reply of the last generate call: the API's usage, else the model's tokenizer (see the engine)
        self.last_token_counts: list[TokenCount | None] = []
        # lm-eval's chat-completions backends go through the package's retrying client (see lm_eval_api)
        self._api = ChatAPISpeaker(lm) if is_chat_api(lm) else None

    def _context(self, messages: list[Message]) -> Any:
        if self.use_chat_template:
            return self.lm.apply_chat_template(messages, add_generation_prompt=True)
        return plain_transcript(messages)

    def prompt_truncation(self, conversations: Sequence[list[Message]]) -> list[bool | None]:
        """Whether lm-eval will cut each history's prompt to fit this model's context (None: cannot tell)."""
        if self._api is not None:
            return [None] * len(conversations)
        return truncated_prompts(self.lm, [self._context(m) for m in conversations], self.gen_kwargs)

    def generate(self, conversations: Sequence[list[Message]], seeds: Sequence[int]) -> list[str]:
        from lm_eval.api.instance import Instance

        requests = []
        contexts = [self._context(messages) for messages in conversations]
        for context, seed in zip(contexts, seeds, strict=True):
            kwargs = copy.deepcopy(self.gen_kwargs)
            if self.seeding == "request":
                kwargs["seed"] = seed
            requests.append(Instance(request_type="generate_until", doc={}, arguments=(context, kwargs), idx=0))
        if self.seeding == "global":
            seed_everything(zlib.crc32(json.dumps(list(seeds)).encode()))
        if self._api is not None:
            completions = self._api.generate_until(requests)
            self.last_token_counts = [c.tokens for c in completions]
            return [c.text for c in completions]
        replies = [str(r) for r in self.lm.generate_until(requests, **({"disable_tqdm": True} if self._quiet else {}))]
        self.last_token_counts = tokenizer_counts(self.lm, contexts, replies, self.gen_kwargs)
        return replies


def seed_everything(seed: int) -> None:
    """Seed the global RNGs that in-process backends (hf) sample from."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_ROLE_PLAYERS: dict[str, Any] = {}


def role_player_lm(settings: ESCSettings, supporter: Any) -> Any:
    """The role-player LM from lm-eval's registry, built once per process and configuration.

    An hf role-player shares the supporter's device and batch size unless
    ``role_model_args`` sets them.
    """
    args = parse_kv(settings.role_model_args)
    if settings.role_model in HF_BACKENDS:
        args.setdefault("device", _device_of(supporter))
        args.setdefault("batch_size", _batch_size_of(supporter))
    key = json.dumps([settings.role_model, args], sort_keys=True, default=str)
    if key not in _ROLE_PLAYERS:
        from lm_eval.api.registry import get_model

        log.info("Loading the role-player: %s (%s)", settings.role_model, settings.role_player_identity()["model"])
        model = settings.role_player_identity()["model"]
        with naming_the_model(f"role-player ({settings.role_model})", model, "role_model_args"):
            _ROLE_PLAYERS[key] = get_model(settings.role_model).create_from_arg_obj(args)
    return _ROLE_PLAYERS[key]


def release_role_players() -> None:
    """Free the role-players once the dialogues are done, so the judge finds the memory free.

    vLLM role-players stay: tearing down one in-process vLLM engine breaks the others
    (e.g. a vLLM supporter) in vLLM's one-process mode.
    """
    import gc

    for key in [k for k in _ROLE_PLAYERS if json.loads(k)[0] not in KEEP_LOADED_BACKENDS]:
        del _ROLE_PLAYERS[key]
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class RolePlayerChat:
    """The role-player as a speaker, seeded so its sampled turns are reproducible.

    Loaded on its first turn: a resumed run whose turns are all stored never loads it.
    """

    def __init__(self, settings: ESCSettings, supporter: Any):
        self.settings = settings
        self.supporter = supporter
        self._chat: LMEvalChatModel | None = None

    def _loaded(self) -> LMEvalChatModel:
        if self._chat is None:
            seeding: Literal["request", "global"] = (
                "request" if self.settings.role_model in PER_REQUEST_SEED_BACKENDS else "global"
            )
            lm = role_player_lm(self.settings, self.supporter)
            self._chat = LMEvalChatModel(lm, self.settings.role_gen_kwargs, seeding=seeding)
        return self._chat

    def prompt_truncation(self, conversations: Sequence[list[Message]]) -> list[bool | None]:
        return self._loaded().prompt_truncation(conversations)

    def generate(self, conversations: Sequence[list[Message]], seeds: Sequence[int]) -> list[str]:
        return self._loaded().generate(conversations, seeds)

    @property
    def last_token_counts(self) -> list[TokenCount | None]:
        return self._chat.last_token_counts if self._chat is not None else []


def _device_of(lm: Any) -> str:
    device = getattr(lm, "device", None)
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _batch_size_of(lm: Any) -> int:
    size = getattr(lm, "batch_size", 1)
    return size if isinstance(size, int) and size > 0 else 1
