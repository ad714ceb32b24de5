"""The dialogue engine: every dialogue advances one round at a time, all together.

The reference runs one dialogue at a time, one turn at a time. Here round r is one
batched call to the role-player for every live dialogue, then one batched call to the
supporter: ``2 × rounds`` calls in all, whatever the number of cards or languages.
The engine knows nothing about harnesses: a speaker is anything with
``generate(conversations, seeds) -> replies`` (see ``ChatModel``).

With a ``DialogueStore`` every speaker batch is persisted before the next one starts,
and a run resumes from what is stored: each batch holds only the dialogues that still
need that turn, so a restarted run generates exactly the missing turns.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from esc_guard_tasks.esc_eval.protocol import (
    Card,
    Message,
    Speaker,
    Transcript,
    Turn,
    role_player_messages,
    supporter_messages,
)
from esc_guard_tasks.esc_eval.store import DialogueStore, dialogue_key
from esc_guard_tasks.usage import RoleUsage, TokenCount

log = logging.getLogger("lm_eval.esc_guard_tasks")


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


@dataclass(frozen=True)
class DialogueSetup:
    """What differs per dialogue: the card, and what the supporter is told about itself."""

    card: Card
    supporter_system_prompt: str
    # Which play of the card (``trials`` setting): its own seeds and store key; trial 0 is the single-trial dialogue.
    trial: int = 0


# Called after each speaker's batch with (round index, speaker that just spoke).
ProgressCallback = Callable[[int, Speaker], None]


def dialogue_seed(run_seed: int, card: Card, trial: int = 0) -> int:
    """A per-dialogue seed that does not depend on which other cards share the batch; trial 0 keeps the seed
    of a run without trials, so a single-trial run's dialogues are the first trial of a multi-trial run."""
    suffix = f":{trial}" if trial else ""
    return zlib.crc32(f"{run_seed}:{card.language}:{card.id}{suffix}".encode())


def turn_seed(dialogue: int, turn_index: int) -> int:
    return (dialogue + 1_000_003 * turn_index) % 2**31


@dataclass
class DialogueEngine:
    role_player: ChatModel
    supporter: ChatModel
    rounds: int
    seed: int = 0
    store: DialogueStore | None = None
    # Everything besides card, seed and prompts that determines a dialogue (both speakers and
    # their settings): part of every stored turn's key, so changed settings never re-use turns.
    identity: Mapping[str, Any] = field(default_factory=dict)

    def run(self, setups: Sequence[DialogueSetup], on_turn: ProgressCallback | None = None) -> list[Transcript]:
        transcripts = [Transcript.start(s.card) for s in setups]
        if not setups:
            return transcripts
        keys = [dialogue_key(self.identity, self.seed, s.card, s.supporter_system_prompt, s.trial) for s in setups]
        if self.store is not None:
            self._resume(self.store, transcripts, keys)
        seeds = [dialogue_seed(self.seed, s.card, s.trial) for s in setups]
        for round_index in range(self.rounds):
            for speaker in ("seeker", "supporter"):
                turn = 2 * round_index + (speaker == "supporter")
                pending = [i for i, t in enumerate(transcripts) if len(t.turns) == turn]
                if pending:
                    self._speak(
                        speaker,
                        turn,
                        [setups[i] for i in pending],
                        [transcripts[i] for i in pending],
                        [seeds[i] for i in pending],
                        [keys[i] for i in pending],
                    )
                if on_turn:
                    on_turn(round_index, speaker)
        return transcripts

    def _resume(self, store: DialogueStore, transcripts: list[Transcript], keys: list[str]) -> None:
        stored = store.load(keys)
        for transcript, key in zip(transcripts, keys, strict=True):
            transcript.turns.extend(stored.get(key, [])[: 2 * self.rounds])
        resumed = sum(len(t.turns) for t in transcripts)
        complete = sum(len(t.turns) == 2 * self.rounds for t in transcripts)
        log.info(
            "Resumed %d of %d turns from the %s (%d of %d dialogues complete)",
            resumed,
            2 * self.rounds * len(transcripts),
            store,
            complete,
            len(transcripts),
        )

    def _speak(
        self,
        speaker: Speaker,
        turn: int,
        setups: list[DialogueSetup],
        transcripts: list[Transcript],
        seeds: list[int],
        keys: list[str],
    ) -> None:
        """One batched call for one speaker's turn ``turn`` of the given dialogues, then persisted."""
        if speaker == "seeker":
            model = self.role_player
            views = [role_player_messages(s.card, t) for s, t in zip(setups, transcripts, strict=True)]
        else:
            model = self.supporter
            views = [supporter_messages(s.supporter_system_prompt, t) for s, t in zip(setups, transcripts, strict=True)]
        truncated = prompt_truncation(model, views)
        replies = model.generate(views, [turn_seed(seed, turn) for seed in seeds])
        if len(replies) != len(transcripts):
            raise RuntimeError(f"the {speaker} returned {len(replies)} replies for {len(transcripts)} dialogues")
        counts = token_counts(model, len(replies))
        new = [
            Turn(speaker, reply.strip(), cut, RoleUsage.of([count]))
            for reply, cut, count in zip(replies, truncated, counts, strict=True)
        ]
        for transcript, t in zip(transcripts, new, strict=True):
            transcript.turns.append(t)
        if self.store is not None:
            self.store.save([(key, turn, t) for key, t in zip(keys, new, strict=True)])
