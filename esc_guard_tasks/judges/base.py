"""The one interface every judge backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, str]


@dataclass(frozen=True)
class JudgeRequest:
    """One judgement: the chat messages, and which adapter (LoRA) or model variant must read them."""

    messages: tuple[Message, ...]
    adapter: str = ""

    @classmethod
    def chat(cls, messages: Sequence[Message], adapter: str = "") -> JudgeRequest:
        return cls(tuple(dict(m) for m in messages), adapter)


class JudgeBackend(Protocol):
    def identity(self) -> dict[str, Any]:
        """What produced the replies: written to results and part of every cache key."""
        ...

    def complete(self, requests: Sequence[JudgeRequest]) -> list[str]:
        """The raw reply to every request, in order (batched however the backend likes)."""
        ...


@dataclass
class JudgeStats:
    """Counters a run reports: how many requests, how many answered from the cache."""

    requests: int = 0
    cache_hits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
