"""The dialogue engine: round-synchronous batching over any ChatModel, scripted here."""

from __future__ import annotations

import pytest

from esc_guard_tasks.esc_eval.dialogue import DialogueSetup
from esc_guard_tasks.esc_eval.dialogue import EscDialogueEngine as DialogueEngine
from esc_guard_tasks.esc_eval.protocol import Card, greeting


class ScriptedSpeaker:
    """Replies '<name> r<call> d<index>' and records every batch it was given."""

    def __init__(self, name: str):
        self.name = name
        self.batches: list[list[list[dict]]] = []

    def generate(self, conversations, seeds):
        self.batches.append([list(c) for c in conversations])
        return [f" {self.name} r{len(self.batches)} d{i} " for i in range(len(conversations))]


def _setups(n: int) -> list[DialogueSetup]:
    return [DialogueSetup(Card(id=i, language="en" if i % 2 else "zh", base=f"card {i}"), "SYS") for i in range(n)]


@pytest.mark.parametrize("n", [1, 7, 40])
def test_two_batched_calls_per_round_whatever_the_number_of_dialogues(n):
    """Round r is one role-player batch and one supporter batch holding every dialogue (both languages)."""
    role, supporter = ScriptedSpeaker("seeker"), ScriptedSpeaker("supporter")
    transcripts = DialogueEngine(role, supporter, rounds=3).run(_setups(n))
    assert len(role.batches) == len(supporter.batches) == 3
    assert all(len(batch) == n for batch in role.batches + supporter.batches)
    assert all(len(t.turns) == 6 for t in transcripts)


def test_transcript_order_and_content():
    """Greeting first, then seeker/supporter alternating; replies are stripped and kept per dialogue."""
    role, supporter = ScriptedSpeaker("seeker"), ScriptedSpeaker("supporter")
    transcripts = DialogueEngine(role, supporter, rounds=2).run(_setups(2))
    second = transcripts[1]
    assert second.greeting == greeting("en") and second.card_id == 1
    assert [(t.speaker, t.text) for t in second.turns] == [
        ("seeker", "seeker r1 d1"),
        ("supporter", "supporter r1 d1"),
        ("seeker", "seeker r2 d1"),
        ("supporter", "supporter r2 d1"),
    ]
    assert len(second.reference_lines()) == 1 + 2 * 2


def test_each_speaker_sees_its_own_perspective_each_round():
    """Round 2: the role-player sees its prompt, the greeting and round 1; the supporter never sees the greeting."""
    role, supporter = ScriptedSpeaker("seeker"), ScriptedSpeaker("supporter")
    DialogueEngine(role, supporter, rounds=2).run(_setups(1))
    role_view = role.batches[1][0]
    assert [m["role"] for m in role_view] == ["system", "user", "assistant", "user"]
    assert role_view[1]["content"] == greeting("zh")
    supporter_view = supporter.batches[1][0]
    assert [m["role"] for m in supporter_view] == ["system", "user", "assistant", "user"]
    assert supporter_view[0]["content"] == "SYS" and supporter_view[1]["content"] == "seeker r1 d0"


def test_a_speaker_losing_replies_is_an_error():
    """A backend returning fewer replies than dialogues must not silently shift replies between dialogues."""

    class Lossy(ScriptedSpeaker):
        def generate(self, conversations, seeds):
            return super().generate(conversations, seeds)[:-1]

    with pytest.raises(RuntimeError, match="returned 1 replies for 2 dialogues"):
        DialogueEngine(Lossy("seeker"), ScriptedSpeaker("supporter"), rounds=1).run(_setups(2))
