"""esc_eval with chat-completions APIs: supporter and role-player both served by a loopback server.

Every request body lm-eval's ``local-chat-completions`` backend sends is recorded, so these
tests check the protocol on the wire: the exact message list each model is shown, who is
asked (``model``), with which sampling settings, in which order, and that the logged
transcripts are what the server answered. Expected message lists are built from the
shared reference JSON and the card files, never from the package's own prompt functions.

The server's replies are unique per dialogue and round: the role-player's reply carries a
short hash of its system prompt and the round number, the supporter's reply echoes that
marker, so every turn can be traced back to its dialogue.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness_runs import Run, run_cli
from loopback_server import LoopbackChatServer

ROLE_MODEL = "esc-role-test"
SUPPORTER_MODEL = "supporter-under-test"
LIMIT = 2
ROUNDS = 3
LANGUAGES = ("en", "zh")
CARD_LANGUAGE = {"en": "english", "zh": "chinese"}
ROLE_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "max_tokens": 512}
ROLE_ONLY_KEYS = ("top_p", "top_k", "repetition_penalty")
MARKER = re.compile(r"\[([0-9a-f]{10})\|r(\d+)\]")


# -- the scripted conversation ----------------------------------------------------------------


def tag_of(system_prompt: str) -> str:
    return hashlib.sha256(system_prompt.encode("utf-8")).hexdigest()[:10]


def seeker_text(tag: str, round_number: int) -> str:
    return f"[{tag}|r{round_number}] 我最近很难过, I feel low"


def supporter_text(marker: str, reply_number: int) -> str:
    return f"supporter heard {marker}, reply {reply_number}"


def scripted_reply(body: dict[str, Any]) -> str:
    """The loopback server's answer: derived only from what the request itself contains."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "UNEXPECTED: messages is not a non-empty list"
    round_number = sum(m.get("role") == "assistant" for m in messages) + 1
    if body.get("model") == ROLE_MODEL:
        return seeker_text(tag_of(messages[0]["content"]), round_number)
    found = MARKER.search(messages[-1]["content"])
    return supporter_text(found.group(0) if found else "NO-MARKER", round_number)


@dataclass(frozen=True)
class Dialogue:
    """One card's expected dialogue, from the reference JSON and the card file only."""

    language: str
    card_id: int
    role_system: str
    greeting: str

    @property
    def tag(self) -> str:
        return tag_of(self.role_system)

    def seeker(self, n: int) -> str:
        return seeker_text(self.tag, n)

    def supporter(self, n: int) -> str:
        return supporter_text(f"[{self.tag}|r{n}]", n)

    def role_view(self, n: int) -> list[dict[str, str]]:
        """What the role-player must receive in round n: it is the assistant; the greeting opens as user."""
        messages = [{"role": "system", "content": self.role_system}, {"role": "user", "content": self.greeting}]
        for k in range(1, n):
            messages += [
                {"role": "assistant", "content": self.seeker(k)},
                {"role": "user", "content": self.supporter(k)},
            ]
        return messages

    def supporter_view(self, n: int, system: str) -> list[dict[str, str]]:
        """What the supporter must receive in round n: seeker turns as user turns, no greeting."""
        messages = [{"role": "system", "content": system}]
        for k in range(1, n):
            messages += [
                {"role": "user", "content": self.seeker(k)},
                {"role": "assistant", "content": self.supporter(k)},
            ]
        return [*messages, {"role": "user", "content": self.seeker(n)}]

    def transcript(self, rounds: int) -> dict[str, Any]:
        turns = []
        for n in range(1, rounds + 1):
            turns += [
                {"speaker": "seeker", "text": self.seeker(n)},
                {"speaker": "supporter", "text": self.supporter(n)},
            ]
        return {"card_id": self.card_id, "language": self.language, "greeting": self.greeting, "turns": turns}


def expected_dialogues(esc_data: Path, reference: dict, limit: int) -> list[Dialogue]:
    """The first ``limit`` cards of each language (what ``--limit`` selects), EN then ZH."""
    dialogues = []
    for language in LANGUAGES:
        records = json.loads((esc_data / f"card_high_{language}.json").read_text("utf-8"))[:limit]
        parts = reference["role_player_system_prompt"][language]
        for record in records:
            assert record["language"] == CARD_LANGUAGE[language]
            system = parts["prefix"] + record["base"] + parts["suffix"]
            dialogues.append(Dialogue(language, record["id"], system, reference["greeting"][language]))
    assert len({d.tag for d in dialogues}) == len(dialogues), "marker hashes must tell the dialogues apart"
    return dialogues


# -- running lm-eval against the loopback server -----------------------------------------------


@dataclass
class ApiRun:
    run: Run | None
    bodies: list[dict[str, Any]]
    answers: list[str]
    dialogues: list[Dialogue]
    error: BaseException | None = None

    def by_model(self, model: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b.get("model") == model]


def api_args(chat_url: str, esc_data: Path, *, rounds: int, limit: int, **metadata: Any) -> list[str]:
    """Supporter and role-player both as ``local-chat-completions`` on the loopback server."""
    meta = {
        "role_model": "local-chat-completions",
        "role_model_args": f"model={ROLE_MODEL},base_url={chat_url}",
        "rounds": rounds,
        "data_dir": str(esc_data),
        "judge": "none",
    } | metadata
    return [
        "--model",
        "local-chat-completions",
        "--model_args",
        f"model={SUPPORTER_MODEL},base_url={chat_url},num_concurrent=1",
        "--tasks",
        "esc_eval",
        "--limit",
        str(limit),
        "--metadata",
        json.dumps(meta),
        "--log_samples",
    ]


def run_against_loopback(
    esc_data: Path,
    reference: dict,
    output: Path,
    *extra: str,
    rounds: int = ROUNDS,
    limit: int = LIMIT,
    expect_failure: bool = False,
    **metadata: Any,
) -> ApiRun:
    answers: list[str] = []

    def reply(body: dict[str, Any]) -> str:
        answer = scripted_reply(body)
        answers.append(answer)  # num_concurrent=1: one request at a time
        return answer

    run, error = None, None
    with LoopbackChatServer(reply, models=[ROLE_MODEL, SUPPORTER_MODEL]) as server:
        args = [*api_args(server.chat_url, esc_data, rounds=rounds, limit=limit, **metadata), *extra]
        try:
            run = run_cli(args, output)
        except Exception as err:  # noqa: BLE001 - the failure itself is what some tests inspect
            if not expect_failure:
                raise
            error = err
    assert not server.errors, f"the reply function raised: {server.errors}"
    return ApiRun(run, server.chat_bodies(), answers, expected_dialogues(esc_data, reference, limit), error)


@pytest.fixture(scope="module")
def api_run(esc_data: Path, reference_prompts: dict, tmp_path_factory: pytest.TempPathFactory) -> ApiRun:
    """One full run: esc_eval (EN + ZH), 2 cards each, 3 rounds, with --apply_chat_template."""
    output = tmp_path_factory.mktemp("api_run")
    return run_against_loopback(esc_data, reference_prompts, output, "--apply_chat_template")


def role_dialogue(body: dict[str, Any], dialogues: list[Dialogue]) -> Any:
    """Which dialogue a role-player request belongs to (by its system prompt)."""
    system = body["messages"][0]["content"]
    return next(((d.language, d.card_id) for d in dialogues if d.role_system == system), ("unknown", system[:80]))


def supporter_dialogue(body: dict[str, Any], dialogues: list[Dialogue]) -> Any:
    """Which dialogue a supporter request belongs to (by the first seeker marker in its history)."""
    found = next(filter(None, (MARKER.search(str(m.get("content"))) for m in body["messages"])), None)
    tag = found.group(1) if found else None
    return next(((d.language, d.card_id) for d in dialogues if d.tag == tag), ("unknown", json.dumps(body)[:120]))


def histories(bodies: list[dict[str, Any]], locate: Any, dialogues: list[Dialogue]) -> dict[Any, list]:
    """Each dialogue's requests in arrival order: {(language, card_id): [messages of round 1, 2, ...]}."""
    grouped: dict[Any, list] = {}
    for body in bodies:
        grouped.setdefault(locate(body, dialogues), []).append(body["messages"])
    return grouped


def rounds_of(bodies: list[dict[str, Any]]) -> list[int]:
    """Round of each request: the number of assistant turns already in its history, plus one."""
    return [sum(m["role"] == "assistant" for m in b["messages"]) + 1 for b in bodies]


# -- the main run ------------------------------------------------------------------------------


def test_role_player_receives_exact_reference_view(api_run: ApiRun):
    """Each round, the role-player gets exactly [system: reference role prompt with the card's base,
    user: reference greeting, then its own replies as assistant and the supporter's as user], in both
    languages, for every dialogue."""
    actual = histories(api_run.by_model(ROLE_MODEL), role_dialogue, api_run.dialogues)
    expected = {(d.language, d.card_id): [d.role_view(n) for n in range(1, ROUNDS + 1)] for d in api_run.dialogues}
    assert actual == expected


def test_supporter_receives_exact_view_without_greeting(api_run: ApiRun, reference_prompts: dict):
    """Each round, the supporter gets exactly [system: 'You are a helpful assistant!', then seeker turns
    as user and its own replies as assistant]; the greeting never reaches it."""
    system = reference_prompts["supporter_system_prompt"]
    supporter = api_run.by_model(SUPPORTER_MODEL)
    actual = histories(supporter, supporter_dialogue, api_run.dialogues)
    expected = {
        (d.language, d.card_id): [d.supporter_view(n, system) for n in range(1, ROUNDS + 1)] for d in api_run.dialogues
    }
    assert actual == expected
    greetings = set(reference_prompts["greeting"].values())
    assert not any(m["content"] in greetings for b in supporter for m in b["messages"])


def test_models_and_sampling_settings_per_speaker(api_run: ApiRun):
    """Role-player requests name the role model and carry its sampling defaults (temperature 0.7,
    top_p 0.8, top_k 20, repetition_penalty 1.05, 512 tokens) and a distinct per-dialogue-and-round
    seed; supporter requests name the supporter and use the task's greedy 512-token decoding, with
    none of the role-player's sampling settings."""
    assert {b["model"] for b in api_run.bodies} == {ROLE_MODEL, SUPPORTER_MODEL}
    role, supporter = api_run.by_model(ROLE_MODEL), api_run.by_model(SUPPORTER_MODEL)
    for body in role:
        assert {k: body.get(k) for k in ROLE_SAMPLING} == ROLE_SAMPLING
        assert isinstance(body["seed"], int) and not isinstance(body["seed"], bool)
    assert len({b["seed"] for b in role}) == len(role), "every role-player turn has its own seed"
    for body in supporter:
        assert body["temperature"] == 0 and body["max_tokens"] == 512
        assert not set(ROLE_ONLY_KEYS) & set(body)


def test_calls_are_batched_round_by_round(api_run: ApiRun):
    """Round r is one batch of role-player requests for all dialogues of both languages, then one batch
    of supporter requests; nothing of round r+1 is sent before round r is complete."""
    per_round = len(api_run.dialogues)
    expected_models = ([ROLE_MODEL] * per_round + [SUPPORTER_MODEL] * per_round) * ROUNDS
    assert [b["model"] for b in api_run.bodies] == expected_models
    expected_rounds = [n for n in range(1, ROUNDS + 1) for _ in range(2 * per_round)]
    assert rounds_of(api_run.bodies) == expected_rounds
    everyone = {(d.language, d.card_id) for d in api_run.dialogues}
    for start in range(0, len(api_run.bodies), per_round):
        batch = api_run.bodies[start : start + per_round]
        locate = role_dialogue if batch[0]["model"] == ROLE_MODEL else supporter_dialogue
        assert {locate(b, api_run.dialogues) for b in batch} == everyone, f"batch starting at request {start}"


def test_logged_transcripts_are_what_the_server_answered(api_run: ApiRun):
    """--log_samples holds, per card and language, the greeting then every turn exactly as the server
    answered it, in order; nothing else and nothing missing."""
    assert api_run.run is not None
    logged_texts: list[str] = []
    for language in LANGUAGES:
        task = f"esc_eval_{language}"
        expected = [d for d in api_run.dialogues if d.language == language]
        assert [s["doc"]["card_id"] for s in api_run.run.samples[task]] == [d.card_id for d in expected]
        transcripts = api_run.run.transcripts(task)
        assert transcripts == [d.transcript(ROUNDS) for d in expected]
        logged_texts += [t["text"] for transcript in transcripts for t in transcript["turns"]]
    assert Counter(logged_texts) == Counter(api_run.answers)
    meta = api_run.run.results["configs"]["esc_eval_en"]["metadata"]["esc_eval"]
    assert meta["role_player"]["backend"] == "local-chat-completions" and meta["role_player"]["model"] == ROLE_MODEL


# -- flags -------------------------------------------------------------------------------------


def test_system_instruction_replaces_only_the_supporter_system_prompt(esc_data, reference_prompts, tmp_path):
    """--system_instruction becomes the supporter's system message (and its only one) in every round;
    the role-player's view is untouched. --gen_kwargs reach only the supporter, role_gen_kwargs only
    the role-player (other role-player defaults kept)."""
    instruction = "Be a kind listener. 请温柔一点。"
    api = run_against_loopback(
        esc_data,
        reference_prompts,
        tmp_path,
        "--apply_chat_template",
        "--system_instruction",
        instruction,
        "--gen_kwargs",
        "max_gen_toks=32",
        rounds=2,
        limit=1,
        role_gen_kwargs={"max_gen_toks": 64},
    )
    role, supporter = api.by_model(ROLE_MODEL), api.by_model(SUPPORTER_MODEL)
    rounds = (1, 2)
    assert histories(supporter, supporter_dialogue, api.dialogues) == {
        (d.language, d.card_id): [d.supporter_view(n, instruction) for n in rounds] for d in api.dialogues
    }
    assert histories(role, role_dialogue, api.dialogues) == {
        (d.language, d.card_id): [d.role_view(n) for n in rounds] for d in api.dialogues
    }
    assert all([m["role"] for m in b["messages"]].count("system") == 1 for b in api.bodies)
    assert {b["max_tokens"] for b in supporter} == {32}
    for body in role:
        assert {k: body.get(k) for k in ROLE_SAMPLING} == ROLE_SAMPLING | {"max_tokens": 64}
    default_system = reference_prompts["supporter_system_prompt"]
    assert not any(default_system in m["content"] for b in api.bodies for m in b["messages"])
    assert api.run is not None and api.run.transcripts("esc_eval_zh") == [
        d.transcript(2) for d in api.dialogues if d.language == "zh"
    ]


@pytest.fixture(scope="module")
def run_without_chat_template(esc_data, reference_prompts, tmp_path_factory) -> ApiRun:
    """A chat-completions supporter run without --apply_chat_template (expected to fail)."""
    output = tmp_path_factory.mktemp("no_template")
    return run_against_loopback(esc_data, reference_prompts, output, rounds=1, limit=1, expect_failure=True)


def test_chat_api_supporter_without_chat_template_fails_naming_the_flag(run_without_chat_template: ApiRun):
    """A chat-completions supporter cannot take a plain-text transcript: the run must fail with an
    error that names --apply_chat_template, and no malformed (non-message-list) request may reach the API."""
    api = run_without_chat_template
    assert api.run is None and api.error is not None
    assert "apply_chat_template" in str(api.error)
    assert all(isinstance(b.get("messages"), list) for b in api.bodies)
    assert api.by_model(SUPPORTER_MODEL) == []


def test_chat_api_supporter_without_chat_template_fails_before_any_call(run_without_chat_template: ApiRun):
    """The misconfiguration is detectable before the dialogues start, so no backend should be called."""
    assert run_without_chat_template.bodies == []
