"""The dialogue engine: every dialogue advances one round at a time, all together.

The reference runs one dialogue at a time, one turn at a time. Here round r is one
batched call to the role-player for every live dialogue, then one batched call to the
supporter: ``2 × rounds`` calls in all, whatever the number of cards or languages.
The engine knows nothing about harnesses: a speaker is anything with
``generate(conversations) -> replies`` (see ``ChatModel``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from esc_guard_tasks.esc_eval.protocol import (
    Card,
    Message,
    Speaker,
    Transcript,
    Turn,
    role_player_messages,
    supporter_messages,
)


class ChatModel(Protocol):
    """One speaker: replies to a batch of chat histories, one reply per history, in order."""

    def generate(self, conversations: Sequence[list[Message]]) -> list[str]: ...


@dataclass(frozen=True)
class DialogueSetup:
    """What differs per dialogue: the card, and what the supporter is told about itself."""

    card: Card
    supporter_system_prompt: str


# Called after each speaker's batch with (round index, speaker that just spoke).
ProgressCallback = Callable[[int, Speaker], None]


@dataclass
class DialogueEngine:
    role_player: ChatModel
    supporter: ChatModel
    rounds: int

    def run(self, setups: Sequence[DialogueSetup], on_turn: ProgressCallback | None = None) -> list[Transcript]:
        transcripts = [Transcript.start(s.card) for s in setups]
        if not setups:
            return transcripts
        for round_index in range(self.rounds):
            views = [role_player_messages(s.card, t) for s, t in zip(setups, transcripts, strict=True)]
            self._append(transcripts, "seeker", self.role_player.generate(views))
            if on_turn:
                on_turn(round_index, "seeker")
            views = [supporter_messages(s.supporter_system_prompt, t) for s, t in zip(setups, transcripts, strict=True)]
            self._append(transcripts, "supporter", self.supporter.generate(views))
            if on_turn:
                on_turn(round_index, "supporter")
        return transcripts

    @staticmethod
    def _append(transcripts: list[Transcript], speaker: Speaker, replies: list[str]) -> None:
        if len(replies) != len(transcripts):
            raise RuntimeError(f"the {speaker} returned {len(replies)} replies for {len(transcripts)} dialogues")
        for transcript, reply in zip(transcripts, replies, strict=True):
            transcript.turns.append(Turn(speaker, reply.strip()))
