"""The ESC-Eval protocol: verbatim strings, per-speaker views, the reference transcript format."""

from __future__ import annotations

import json

import pytest

from esc_guard_tasks.esc_eval.cards import load_cards
from esc_guard_tasks.esc_eval.protocol import (
    Card,
    Transcript,
    Turn,
    default_supporter_system_prompt,
    greeting,
    role_player_messages,
    role_player_system_prompt,
    supporter_messages,
)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_role_player_prompt_is_byte_exact(language, esc_data, reference_prompts):
    """ESC-Role's system prompt is reference prefix + card base + suffix, byte for byte, for every real card."""
    parts = reference_prompts["role_player_system_prompt"][language]
    cards = load_cards(language, data_dir=esc_data)
    for card in cards:
        expected = (parts["prefix"] + card.base + parts["suffix"]).encode("utf-8")
        assert role_player_system_prompt(card.base, card.language).encode("utf-8") == expected
    assert len(cards) == {"en": 264, "zh": 260}[language]


def test_fixed_strings_match_reference(reference_prompts):
    """Greeting and supporter system prompt are the reference strings, including quirks."""
    assert greeting("en") == reference_prompts["greeting"]["en"]
    assert greeting("zh") == reference_prompts["greeting"]["zh"]
    assert default_supporter_system_prompt() == "You are a helpful assistant!"
    # quirks the trained role-player saw: EN prefix ends in an apostrophe, ZH opens a quote never closed
    assert role_player_system_prompt("X", "en").split("X")[0].endswith("'")
    assert "“X" in role_player_system_prompt("X", "zh") and "”" not in role_player_system_prompt("X", "zh")


def _two_round_transcript(card: Card) -> Transcript:
    transcript = Transcript.start(card)
    transcript.turns += [Turn("seeker", "s1"), Turn("supporter", "a1"), Turn("seeker", "s2"), Turn("supporter", "a2")]
    return transcript


@pytest.mark.parametrize("language", ["en", "zh"])
def test_role_player_view(language):
    """The role-player gets its card prompt, the greeting as the first user turn, and is the assistant."""
    card = Card(id=1, language=language, base="Age: 30")
    messages = role_player_messages(card, _two_round_transcript(card))
    assert messages == [
        {"role": "system", "content": role_player_system_prompt("Age: 30", language)},
        {"role": "user", "content": greeting(language)},
        {"role": "assistant", "content": "s1"},
        {"role": "user", "content": "a1"},
        {"role": "assistant", "content": "s2"},
        {"role": "user", "content": "a2"},
    ]


def test_supporter_view_never_contains_greeting():
    """The supporter's history starts with the seeker's first message; roles alternate user/assistant."""
    card = Card(id=1, language="en", base="Age: 30")
    messages = supporter_messages("SYS", _two_round_transcript(card))
    assert messages == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "s1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "s2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert all(greeting("en") not in m["content"] for m in messages)


def test_reference_transcripts_round_trip(esc_data):
    """Upstream example transcripts parse into 5 rounds and render back to the identical 11 strings."""
    files = sorted((esc_data / "result").glob("*/*.json"))
    assert len(files) == 4
    for path in files:
        language = "zh" if "zh" in path.name else "en"
        for key, lines in json.loads(path.read_text("utf-8")).items():
            transcript = Transcript.from_reference_lines(lines, card_id=int(key), language=language)
            assert transcript.rounds == 5 and len(transcript.turns) == 10
            assert [t.speaker for t in transcript.turns] == ["seeker", "supporter"] * 5
            assert transcript.reference_lines() == lines
            assert Transcript.from_json(transcript.to_json()) == transcript


def test_unprefixed_reference_line_is_rejected():
    """A transcript line without a speaker prefix is an error naming the card, not a guess."""
    with pytest.raises(ValueError, match="card 7"):
        Transcript.from_reference_lines(["AI assistant：hi", "no prefix here"], card_id=7, language="en")
