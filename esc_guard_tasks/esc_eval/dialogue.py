"""ESC-Eval's dialogues on the dialogue engine: its ``DialogueProtocol`` (``EscDialogues``) and the engine
bound to it (``EscDialogueEngine``).

ESC-Role plays the seeker and speaks first each round, the model under test is the supporter; each sees its
own view of the transcript (``protocol.role_player_messages`` / ``supporter_messages``). A dialogue's seed and
store key depend only on the run's seed, the card, the trial and (for the key) the speakers' settings and
prompts, so a stored run resumes after any change elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from esc_guard_tasks.dialogue.engine import ChatModel, DialogueEngine
from esc_guard_tasks.dialogue.store import STORE_FORMAT, DialogueStore
from esc_guard_tasks.esc_eval.protocol import (
    Card,
    Message,
    Transcript,
    prompts,
    role_player_messages,
    supporter_messages,
)

SPEAKERS = ("seeker", "supporter")  # ESC-Role opens every round


@dataclass(frozen=True)
class DialogueSetup:
    """What differs per dialogue: the card, and what the supporter is told about itself."""

    card: Card
    supporter_system_prompt: str
    # Which play of the card (``trials`` setting): its own seeds and store key; trial 0 is the single-trial dialogue.
    trial: int = 0


def dialogue_seed(run_seed: int, card: Card, trial: int = 0) -> int:
    """A per-dialogue seed that does not depend on which other cards share the batch; trial 0 keeps the seed
    of a run without trials, so a single-trial run's dialogues are the first trial of a multi-trial run."""
    suffix = f":{trial}" if trial else ""
    return zlib.crc32(f"{run_seed}:{card.language}:{card.id}{suffix}".encode())


def dialogue_key(
    identity: Mapping[str, Any], seed: int, card: Card, supporter_system_prompt: str, trial: int = 0
) -> str:
    """The fingerprint of one dialogue: models and their settings (``identity``), seed, card, prompts, trial.

    Trial 0 has the key of a dialogue made before trials existed, so existing stores stay valid."""
    payload = [STORE_FORMAT, prompts(), dict(identity), seed, asdict(card), supporter_system_prompt]
    if trial:
        payload.append({"trial": trial})
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class EscDialogues:
    """ESC-Eval's ``DialogueProtocol``. ``identity``: everything besides card, seed and prompts that determines
    a dialogue (both speakers and their settings), part of every stored turn's key, so changed settings never
    re-use turns."""

    run_seed: int = 0
    identity: Mapping[str, Any] = field(default_factory=dict)

    @property
    def speakers(self) -> tuple[str, ...]:
        return SPEAKERS

    def start(self, setup: DialogueSetup) -> Transcript:
        return Transcript.start(setup.card)

    def view(self, speaker: str, setup: DialogueSetup, dialogue: Transcript) -> list[Message]:
        if speaker == "seeker":
            return role_player_messages(setup.card, dialogue)
        return supporter_messages(setup.supporter_system_prompt, dialogue)

    def seed(self, setup: DialogueSetup) -> int:
        return dialogue_seed(self.run_seed, setup.card, setup.trial)

    def key(self, setup: DialogueSetup) -> str:
        return dialogue_key(self.identity, self.run_seed, setup.card, setup.supporter_system_prompt, setup.trial)


class EscDialogueEngine(DialogueEngine[DialogueSetup, Transcript]):
    """The engine on ESC-Eval's protocol: ``role_player`` (ESC-Role) is the seeker, ``supporter`` the model
    under test; ``seed`` is the run's seed."""

    def __init__(
        self,
        role_player: ChatModel,
        supporter: ChatModel,
        rounds: int,
        seed: int = 0,
        store: DialogueStore | None = None,
        identity: Mapping[str, Any] | None = None,
    ):
        protocol = EscDialogues(seed, dict(identity or {}))
        super().__init__(protocol, {"seeker": role_player, "supporter": supporter}, rounds, store)
