"""The dialogue engine takes any ``DialogueProtocol``: a second dialogue benchmark (here a three-speaker toy one)
reuses batching, seeds, the store and resume without any ESC-Eval code."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from esc_guard_tasks.dialogue.engine import DialogueEngine
from esc_guard_tasks.dialogue.store import SQLiteDialogueStore
from esc_guard_tasks.dialogue.turn import Turn


@dataclass
class Chat:
    topic: str
    turns: list[Turn] = field(default_factory=list)


@dataclass(frozen=True)
class Panel:
    """Three speakers in a fixed order; each sees the topic and the others' turns as user messages."""

    speakers: tuple[str, ...] = ("host", "guest", "critic")

    def start(self, setup: str) -> Chat:
        return Chat(setup)

    def view(self, speaker, setup, dialogue):
        turns = [{"role": "assistant" if t.speaker == speaker else "user", "content": t.text} for t in dialogue.turns]
        return [{"role": "system", "content": f"{speaker} on {setup}"}, *turns]

    def seed(self, setup: str) -> int:
        return len(setup)

    def key(self, setup: str) -> str:
        return f"panel:{setup}"


class Echo:
    """Replies '<name> <turn count> <seed>' and records every batch (views and seeds)."""

    def __init__(self, name: str):
        self.name, self.batches = name, []

    def generate(self, conversations, seeds):
        self.batches.append((list(conversations), list(seeds)))
        return [f"{self.name} {len(c) - 1} {s}" for c, s in zip(conversations, seeds, strict=True)]


def _models():
    return {name: Echo(name) for name in Panel().speakers}


def test_a_second_protocol_runs_in_its_speaking_order_with_one_batch_per_speaker_and_round():
    """Each round is one batch per speaker in the protocol's order; every speaker sees the protocol's view."""
    models = _models()
    chats = DialogueEngine(Panel(), models, rounds=2).run(["tea", "rain"])
    assert [[t.speaker for t in c.turns] for c in chats] == [["host", "guest", "critic"] * 2] * 2
    assert all(len(m.batches) == 2 and all(len(v) == 2 for v, _ in m.batches) for m in models.values())
    critic_view = models["critic"].batches[1][0][0]
    assert critic_view[0] == {"role": "system", "content": "critic on tea"} and len(critic_view) == 6
    assert critic_view[3] == {"role": "assistant", "content": chats[0].turns[2].text}


def test_a_second_protocol_resumes_from_the_store_under_its_own_keys(tmp_path):
    """A stopped run resumes: stored turns (under the protocol's keys) are not generated again, and the
    result equals a run without a store (same seeds per dialogue and turn)."""
    plain = DialogueEngine(Panel(), _models(), rounds=2).run(["tea", "rain"])
    store = SQLiteDialogueStore(tmp_path / "d.sqlite")
    DialogueEngine(Panel(), _models(), rounds=1, store=store).run(["tea"])
    models = _models()
    resumed = DialogueEngine(Panel(), models, rounds=2, store=store).run(["tea", "rain"])
    assert [t.text for c in resumed for t in c.turns] == [t.text for c in plain for t in c.turns]
    assert [len(v) for v, _ in models["host"].batches] == [1, 2]  # round 1 of "tea" came from the store
    assert set(store.load(["panel:tea", "panel:rain"])) == {"panel:tea", "panel:rain"}


def test_stored_turns_out_of_the_speaking_order_are_refused(tmp_path):
    """A store whose turns do not follow the protocol's speaking order is an error naming the store file."""
    store = SQLiteDialogueStore(tmp_path / "d.sqlite")
    store.save([("panel:tea", 0, Turn("guest", "out of turn"))])
    with pytest.raises(ValueError, match=r"d\.sqlite.*turn 0 by guest, where host speaks"):
        DialogueEngine(Panel(), _models(), rounds=1, store=store).run(["tea"])
