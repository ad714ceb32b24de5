"""The ESC-Eval interaction protocol as plain data and pure functions.

Fidelity lives here: every string a trained model sees (ESC-Role's system prompt and
greeting, the supporter's default system prompt, the transcript speaker prefixes)
comes verbatim from ``prompts.json``, extracted from the reference implementation
(``haidequanbu/ESC-Eval``, provenance inside the file).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from esc_guard_tasks.dialogue.turn import Message, Turn
from esc_guard_tasks.usage import RoleUsage

Language = Literal["en", "zh"]
Speaker = Literal["seeker", "supporter"]
LANGUAGES: tuple[Language, ...] = ("en", "zh")
CARD_LANGUAGE: dict[Language, str] = {"en": "english", "zh": "chinese"}


@cache
def prompts() -> dict[str, Any]:
    """The verbatim reference strings (zero-width spaces and typos included)."""
    return json.loads(resources.files(__package__).joinpath("prompts.json").read_text("utf-8"))


def role_player_system_prompt(card_base: str, language: Language) -> str:
    """ESC-Role's system prompt: reference prefix + the card's ``base`` text + suffix."""
    parts = prompts()["role_player_system_prompt"][language]
    return parts["prefix"] + card_base + parts["suffix"]


def greeting(language: Language) -> str:
    """The fixed opening line attributed to the assistant; only the role-player sees it."""
    return prompts()["greeting"][language]


def default_supporter_system_prompt() -> str:
    return prompts()["supporter_system_prompt"]


@dataclass(frozen=True)
class Card:
    """One role card: who the simulated help-seeker is."""

    id: int
    language: Language
    base: str
    source: str = ""
    topic: str = ""


@dataclass
class Transcript:
    """A dialogue as the reference records it: the greeting, then seeker/supporter turns."""

    card_id: int
    language: Language
    greeting: str
    turns: list[Turn] = field(default_factory=list)

    @classmethod
    def start(cls, card: Card) -> Transcript:
        return cls(card_id=card.id, language=card.language, greeting=greeting(card.language))

    @property
    def rounds(self) -> int:
        return sum(t.speaker == "supporter" for t in self.turns)

    def usage(self, speaker: Speaker) -> RoleUsage:
        """What one speaker's turns cost in this run; turns not generated in it (resumed) count as ``reused``."""
        turns = [t for t in self.turns if t.speaker == speaker]
        sent = sum((t.usage for t in turns if t.usage is not None), RoleUsage())
        return sent + RoleUsage(reused=sum(t.usage is None for t in turns))

    def reference_lines(self) -> list[str]:
        """The reference's transcript format: prefixed strings, greeting first (11 for 5 rounds)."""
        prefix = prompts()["protocol"]["transcript_prefix"]
        lines = [prefix["supporter_or_greeting"] + self.greeting]
        for turn in self.turns:
            key = "role_player" if turn.speaker == "seeker" else "supporter_or_greeting"
            lines.append(prefix[key] + turn.text)
        return lines

    @classmethod
    def from_reference_lines(cls, lines: list[str], card_id: int, language: Language) -> Transcript:
        """Parse the reference's transcript format (upstream ``result/*.json`` values)."""
        prefix = prompts()["protocol"]["transcript_prefix"]
        by_prefix: dict[str, Speaker] = {prefix["role_player"]: "seeker", prefix["supporter_or_greeting"]: "supporter"}

        def split(line: str) -> tuple[Speaker, str]:
            for tag, speaker in by_prefix.items():
                if line.startswith(tag):
                    return speaker, line[len(tag) :]
            raise ValueError(f"transcript line of card {card_id} has no speaker prefix: {line[:60]!r}")

        if not lines or split(lines[0])[0] != "supporter":
            raise ValueError(f"transcript of card {card_id} must open with the assistant greeting")
        turns = [Turn(*split(line)) for line in lines[1:]]
        return cls(card_id=card_id, language=language, greeting=split(lines[0])[1], turns=turns)

    def to_json(self) -> str:
        data = asdict(self)
        for turn in data["turns"]:
            del turn["usage"]
            if turn["prompt_truncated"] is None:  # not measured: the turn reads as the reference records it
                del turn["prompt_truncated"]
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Transcript:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        fields = dict(data)
        turns = [Turn(**t) for t in fields.pop("turns")]
        return cls(**fields, turns=turns)


def role_player_messages(card: Card, transcript: Transcript) -> list[Message]:
    """ESC-Role's own view: it is the assistant; the greeting and supporter replies are user turns."""
    messages = [
        {"role": "system", "content": role_player_system_prompt(card.base, card.language)},
        {"role": "user", "content": transcript.greeting},
    ]
    for turn in transcript.turns:
        role = "assistant" if turn.speaker == "seeker" else "user"
        messages.append({"role": role, "content": turn.text})
    return messages


def supporter_messages(system_prompt: str, transcript: Transcript) -> list[Message]:
    """The model under test's view: seeker turns are user turns; it never sees the greeting."""
    messages = [{"role": "system", "content": system_prompt}]
    for turn in transcript.turns:
        role = "user" if turn.speaker == "seeker" else "assistant"
        messages.append({"role": role, "content": turn.text})
    return messages
