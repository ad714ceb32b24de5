"""One turn of a dialogue, and the chat message a speaker reads: the data the engine and the store share."""

from __future__ import annotations

from dataclasses import dataclass, field

from esc_guard_tasks.usage import RoleUsage

Message = dict[str, str]


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str
    # Whether the speaker's harness cut this turn's prompt from the left to fit its context budget
    # (None: not measured, e.g. an API backend, which does not say).
    prompt_truncated: bool | None = None
    # What generating this turn cost in this run (one request; None: not generated in this run, e.g. resumed
    # from the dialogue store). Not part of the dialogue: ignored by equality and left out of its JSON.
    usage: RoleUsage | None = field(default=None, compare=False)
