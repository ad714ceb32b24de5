"""ESC-RANK's inputs are byte-identical to the reference scorer's; parsing and aggregation are exact."""

from __future__ import annotations

import json
import math

import pytest

from esc_guard_tasks.esc_eval.judging import judge_request, verdict_for, verdicts_to_json
from esc_guard_tasks.esc_eval.protocol import Transcript
from esc_guard_tasks.esc_eval.rubric import (
    dimensions,
    internlm2_prompt,
    judge_query,
    parse_reference,
    parse_strict,
)
from esc_guard_tasks.metrics.esc_eval import process_results


def _reference_inputs(esc_data, reference_prompts):
    """Every (file, dialogue, dimension) input as the reference builds it, from the shared JSON alone."""
    judge = reference_prompts["judge"]
    for path in sorted((esc_data / "result").glob("*/*.json")):
        language = "zh" if "zh" in path.name else "en"  # the reference infers it from the file name
        for key, lines in json.loads(path.read_text("utf-8")).items():
            dialogue = judge["turn_separator"].join(lines)
            for rewrite in judge["speaker_tag_rewrites"]:
                dialogue = dialogue.replace(rewrite["old"], rewrite["new"])
            for i, dimension in enumerate(judge["dimension_strings"]):
                expected = (
                    judge["rubric_prompts"][language][i]
                    + judge["dialogue_header"]
                    + dialogue.strip()
                    + judge["dialogue_trailer"]
                    + judge["closing_template"].format(dimension=dimension)
                )
                yield path, language, int(key), lines, i, expected


def test_judge_inputs_are_byte_identical_to_the_reference(esc_data, reference_prompts):
    """All 84 example inputs (12 dialogues × 7 dimensions, both languages) match the reference byte for byte,
    zero-width spaces, typos and the seeker tag's lost colon included."""
    count = 0
    for _path, language, key, lines, i, expected in _reference_inputs(esc_data, reference_prompts):
        transcript = Transcript.from_reference_lines(lines, card_id=key, language=language)
        assert judge_query(transcript, dimensions()[i]).encode("utf-8") == expected.encode("utf-8")
        count += 1
    assert count == 84
    queries = "".join(judge_query(transcript, d) for d in dimensions())
    assert "\u200b" in queries and "fluecy" in queries and "suggection effectiveness" in queries
    assert "**用户**" in queries and "**用户**：" not in queries and "**AI助手**：" in queries


def test_esc_rank_request_is_internlm2_chat_with_default_system_prompt(reference_prompts):
    """ESC-RANK reads [InternLM2's default system prompt, query] through the language's adapter."""
    transcript = Transcript.from_reference_lines(["AI assistant：hi", "ESC-Role：sad", "AI assistant：why?"], 1, "en")
    request = judge_request(transcript, dimensions()[3], "esc_rank")
    assert request.adapter == "suggestion_en"
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.messages[0]["content"] == reference_prompts["internlm2_meta_instruction"]
    zh = Transcript.from_reference_lines(["AI assistant：你好", "ESC-Role：难过"], 2, "zh")
    assert judge_request(zh, dimensions()[3], "esc_rank").adapter == "suggestion"
    assert judge_request(zh, dimensions()[0], "llm_rubric").messages[0]["role"] == "user"
    prompt = internlm2_prompt("Q")
    assert prompt.startswith("<|im_start|>system\nYou are an AI assistant whose name is InternLM (书生·浦语).")
    assert prompt.endswith("<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("reply", "strict", "reference"),
    [
        ("3", 3, 3),
        (" 4\n", 4, 4),
        ("0", 0, 0),
        ("Score: 3 (0-4 scale)", None, 0),
        ("10", None, 0),
        ("3/4", None, 3),
        ("5", None, -1),
        ("", None, -1),
        ("three", None, -1),
        ("2.", None, 2),
    ],
)
def test_strict_and_reference_parsers(reply, strict, reference):
    """Strict: one digit 0–4 or invalid; reference: first of '0'..'4' anywhere, else -1 (its known defects kept)."""
    assert parse_strict(reply) == strict
    assert parse_reference(reply) == reference


def test_dimension_rows_exclude_invalid_replies():
    """Scores are ×25; an invalid reply is NaN (excluded, counted in invalid_rate), never 0."""
    replies = ["3", "4", "Score: 2", "1", "0", "2", "4"]
    verdicts = [verdict_for(d, r) for d, r in zip(dimensions(), replies, strict=True)]
    record = {"transcript": json.loads(_transcript().to_json()), "verdicts": verdicts_to_json(verdicts)}
    metrics = process_results({"card_id": 7}, [json.dumps(record)])
    assert metrics["fluency"] == 75.0 and metrics["expression"] == 100.0
    assert math.isnan(metrics["empathy"])
    assert metrics["average"] == pytest.approx((75 + 100 + 25 + 0 + 50 + 100) / 6)
    assert metrics["invalid_rate"] == pytest.approx(1 / 7)
    assert [v["reference_score"] for v in record["verdicts"]][2] == 2
    assert set(metrics) == {d.metric for d in dimensions()} | {"average", "invalid_rate", "empty_turn_rate"}


def test_aggregation_matches_hand_computation():
    """nanmean over dialogues equals the hand-computed mean of the valid scores."""
    from lm_eval.api.metrics import nanmean

    per_dialogue = [75.0, math.nan, 25.0, 100.0]
    assert nanmean(per_dialogue) == pytest.approx((75 + 25 + 100) / 3)


def _transcript() -> Transcript:
    return Transcript.from_reference_lines(["AI assistant：hi", "ESC-Role：sad", "AI assistant：why?"], 7, "en")
