"""The dialogue engine: every dialogue advances one round at a time, all together.

A reference implementation typically runs one dialogue at a time, one turn at a time. Here round r is one
batched call per speaker, in the protocol's speaking order, for every live dialogue: ``speakers × rounds``
calls in all, whatever the number of dialogues. The engine knows nothing about harnesses (a speaker is anything
with ``generate(conversations, seeds) -> replies``, see ``ChatModel``) nor about any benchmark: a
``DialogueProtocol`` says who speaks in which order, what each speaker sees, and each dialogue's seed and
store key.

With a ``DialogueStore`` every speaker batch is persisted before the next one starts, and a run resumes from
what is stored: each batch holds only the dialogues that still need that turn, so a restarted run generates
exactly the missing turns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from esc_guard_tasks.dialogue.store import DialogueStore
from esc_guard_tasks.dialogue.turn import Message, Turn
from esc_guard_tasks.usage import RoleUsage, TokenCount

log = logging.getLogger("lm_eval.esc_guard_tasks")

Setup = TypeVar("Setup")  # what differs per dialogue (a role card, a system prompt, …)
SetupIn = TypeVar("SetupIn", contravariant=True)


class Dialogue(Protocol):
    """What the engine needs of a dialogue record: its turns so far, appended in speaking order."""

    turns: list[Turn]


D = TypeVar("D", bound=Dialogue)


class DialogueProtocol(Protocol[SetupIn, D]):
    """A benchmark's dialogues: ``speakers`` in speaking order (one turn each per round), an empty dialogue
    per setup, each speaker's view of it, and the per-dialogue seed and store key (both independent of which
    other dialogues share a batch, so a turn is the same in any batch and after a resume)."""

    @property
    def speakers(self) -> tuple[str, ...]: ...

    def start(self, setup: SetupIn) -> D: ...

    def view(self, speaker: str, setup: SetupIn, dialogue: D) -> list[Message]: ...

    def seed(self, setup: SetupIn) -> int: ...

    def key(self, setup: SetupIn) -> str: ...


class ChatModel(Protocol):
    """One speaker: replies to a batch of chat histories, one reply per history, in order.

    ``seeds`` has one entry per history, fixed by the dialogue and the turn index: a speaker
    that samples draws from it, so a turn does not depend on which other dialogues share
    the batch, nor on whether the run was resumed.
    """

    def generate(self, conversations: Sequence[list[Message]], seeds: Sequence[int]) -> list[str]: ...


def token_counts(model: ChatModel, replies: int) -> list[TokenCount | None]:
    """Per reply of the speaker's last ``generate`` call, its tokens (None: the speaker cannot tell).

    A speaker may keep ``last_token_counts`` (from an API's ``usage`` or its own tokenizer); the engine
    records them with each turn, so a run can say what each role cost."""
    counts = getattr(model, "last_token_counts", None)
    return list(counts) if counts is not None and len(counts) == replies else [None] * replies


def prompt_truncation(model: ChatModel, conversations: Sequence[list[Message]]) -> list[bool | None]:
    """Per history, whether the speaker's backend will cut its prompt to fit its context (None: unknown).

    A speaker may offer ``prompt_truncation(conversations)``; the engine records the answer with each turn
    (and the store keeps it), so an overflowing context is counted, never silently absorbed."""
    measure = getattr(model, "prompt_truncation", None)
    return list(measure(conversations)) if measure is not None else [None] * len(conversations)


# Called after each speaker's batch with (round index, speaker that just spoke).
ProgressCallback = Callable[[int, str], None]


def turn_seed(dialogue: int, turn_index: int) -> int:
    return (dialogue + 1_000_003 * turn_index) % 2**31


@dataclass
class DialogueEngine(Generic[Setup, D]):
    """Plays ``rounds`` rounds of every dialogue of a ``protocol``, ``models[speaker]`` speaking each turn."""

    protocol: DialogueProtocol[Setup, D]
    models: Mapping[str, ChatModel]
    rounds: int
    store: DialogueStore | None = None

    def run(self, setups: Sequence[Setup], on_turn: ProgressCallback | None = None) -> list[D]:
        dialogues = [self.protocol.start(s) for s in setups]
        if not setups:
            return dialogues
        speakers = self.protocol.speakers
        keys = [self.protocol.key(s) for s in setups]
        if self.store is not None:
            self._resume(self.store, dialogues, keys)
        seeds = [self.protocol.seed(s) for s in setups]
        for round_index in range(self.rounds):
            for position, speaker in enumerate(speakers):
                turn = len(speakers) * round_index + position
                pending = [i for i, d in enumerate(dialogues) if len(d.turns) == turn]
                if pending:
                    self._speak(
                        speaker,
                        turn,
                        [setups[i] for i in pending],
                        [dialogues[i] for i in pending],
                        [seeds[i] for i in pending],
                        [keys[i] for i in pending],
                    )
                if on_turn:
                    on_turn(round_index, speaker)
        return dialogues

    def _resume(self, store: DialogueStore, dialogues: list[D], keys: list[str]) -> None:
        speakers = self.protocol.speakers
        total = len(speakers) * self.rounds
        stored = store.load(keys)
        for dialogue, key in zip(dialogues, keys, strict=True):
            for index, turn in enumerate(stored.get(key, [])[:total]):
                if turn.speaker != speakers[index % len(speakers)]:
                    raise ValueError(
                        f"{store}: dialogue {key[:12]}… has turn {index} by {turn.speaker}, where"
                        f" {speakers[index % len(speakers)]} speaks; delete the file to start afresh"
                    )
                dialogue.turns.append(turn)
        log.info(
            "Resumed %d of %d turns from the %s (%d of %d dialogues complete)",
            sum(len(d.turns) for d in dialogues),
            total * len(dialogues),
            store,
            sum(len(d.turns) == total for d in dialogues),
            len(dialogues),
        )

    def _speak(
        self, speaker: str, turn: int, setups: list[Setup], dialogues: list[D], seeds: list[int], keys: list[str]
    ) -> None:
        """One batched call for one speaker's turn ``turn`` of the given dialogues, then persisted."""
        model = self.models[speaker]
        views = [self.protocol.view(speaker, s, d) for s, d in zip(setups, dialogues, strict=True)]
        truncated = prompt_truncation(model, views)
        replies = model.generate(views, [turn_seed(seed, turn) for seed in seeds])
        if len(replies) != len(dialogues):
            raise RuntimeError(f"the {speaker} returned {len(replies)} replies for {len(dialogues)} dialogues")
        counts = token_counts(model, len(replies))
        new = [
            Turn(speaker, reply.strip(), cut, RoleUsage.of([count]))
            for reply, cut, count in zip(replies, truncated, counts, strict=True)
        ]
        for dialogue, t in zip(dialogues, new, strict=True):
            dialogue.turns.append(t)
        if self.store is not None:
            self.store.save([(key, turn, t) for key, t in zip(keys, new, strict=True)])
