"""The one interface every judge backend implements, and the one verdict every benchmark's judging returns."""

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


@dataclass(frozen=True)
class Verdict:
    """One judged item: the dimension, the score (None = an invalid reply, never 0) and the judge's raw reply.

    ``reference_score``: the reference implementation's parse of the same reply, kept where a benchmark compares
    with it (ESC-Eval's scorer); None elsewhere, and then left out of the JSON (MLLMGuard's records)."""

    dimension: str
    score: int | None
    raw: str
    reference_score: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The samples-file form: ``dimension``, ``score``, [``reference_score``,] ``raw``, in this order."""
        out: dict[str, Any] = {"dimension": self.dimension, "score": self.score}
        if self.reference_score is not None:
            out["reference_score"] = self.reference_score
        return out | {"raw": self.raw}


def verdicts_to_json(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    return [v.to_json() for v in verdicts]


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
