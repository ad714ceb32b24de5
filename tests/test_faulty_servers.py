"""Every OpenAI-compatible path under a server that fails 20% of its requests, and under a dead one.

The paths: lm-eval's ``local-chat-completions`` as the supporter (``--model``) and as the
role-player (``role_model``), the ESC-Eval judge (``judge_backend=openai``, here
``judge=llm_rubric``) and the MLLMGuard LLM judge. The loopback server answers as a pure
function of the request; a fault injector in front of it fails one attempt in five (a
deterministic function of the request and its attempt number), cycling through 429, 500, a
timeout, a dropped connection, truncated JSON, a 200 without ``choices`` and a 200 with
``content: null`` — the last two are what lm-eval 0.4.13 turns into an empty turn on its own.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness_runs import Run, run_cli
from loopback_server import LoopbackChatServer, LoopbackDroppedConnectionError, LoopbackHTTPError, chat_completion

from esc_guard_tasks.chat_api import ChatAPIError
from esc_guard_tasks.judges import registry
from esc_guard_tasks.mllmguard.judges import LLMJudge

ROLE_MODEL = "esc-role-test"
SUPPORTER_MODEL = "supporter-under-test"
JUDGE_MODEL = "rubric-judge"
FAULT_RATE = 0.2
ROUNDS = 4
FAULT_KINDS = ("429", "500", "timeout", "drop", "truncated-json", "no-choices", "null-content")
SLOW_REPLY = 1.6  # seconds; the clients' timeouts below are 1 s (lm-eval's is an int) and 0.5 s (judges)
FAST_JUDGE = "retry_backoff=0.01,max_retry_wait=0.05,timeout=0.5"


def digest(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)


def request_key(body: dict[str, Any]) -> str:
    """What identifies one logical request across its attempts: model, messages, seed."""
    return json.dumps([body.get("model"), body.get("messages"), body.get("seed")], ensure_ascii=False)


def scripted(body: dict[str, Any]) -> str:
    """The fault-free answer, a function of the request only: a digit for judges, a traceable line otherwise."""
    h = digest(request_key(body))
    if body["model"] == JUDGE_MODEL:
        return str(h % 5)
    if body["model"].startswith("mllmguard"):
        return "Score: 2" if h % 3 == 0 else str(h % 4)
    return f"{body['model']} says {h % 10**8} after {len(body['messages'])} messages"


class FaultInjector:
    """Wraps a reply function: attempt n of request k fails when digest(k, n) falls in the lowest 20%.

    Faulted attempts take the kinds in turn (so a handful of faults covers all seven); the
    first attempt of each model's first request always fails, so every path is exercised.
    """

    def __init__(self, reply: Callable[[dict[str, Any]], str]):
        self.reply = reply
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.models_seen: set[str] = set()
        self.injected: list[tuple[str, str]] = []  # (model, kind)

    def __call__(self, body: dict[str, Any]) -> str | bytes | dict[str, Any]:
        key = request_key(body)
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
            first_of_model = body["model"] not in self.models_seen
            self.models_seen.add(body["model"])
            faulted = first_of_model or digest(f"{attempt}|{key}") % 1000 < FAULT_RATE * 1000
            kind = FAULT_KINDS[len(self.injected) % len(FAULT_KINDS)] if faulted else None
            if kind:
                self.injected.append((body["model"], kind))
        if kind is None:
            return self.reply(body)
        if kind in ("429", "500"):
            raise LoopbackHTTPError(int(kind), "injected")
        if kind == "timeout":
            time.sleep(SLOW_REPLY)
            return self.reply(body)  # too late: the client has given up on this attempt
        if kind == "drop":
            raise LoopbackDroppedConnectionError
        if kind == "truncated-json":
            return json.dumps(chat_completion(body, self.reply(body))).encode()[:40]
        if kind == "no-choices":
            return {"object": "error", "message": "overloaded"}
        nulled = chat_completion(body, "")
        nulled["choices"][0]["message"]["content"] = None
        return nulled


def esc_args(chat_url: str, base_url: str, card_dir: Path) -> list[str]:
    """esc_eval (EN + ZH, 1 card each, 4 rounds): supporter, role-player and llm_rubric judge on the server."""
    meta = {
        "role_model": "local-chat-completions",
        "role_model_args": f"model={ROLE_MODEL},base_url={chat_url},timeout=1,max_retries=6",
        "rounds": ROUNDS,
        "data_dir": str(card_dir),
        "judge": "llm_rubric",
        "judge_backend": "openai",
        "judge_args": f"base_url={base_url},model={JUDGE_MODEL},num_concurrent=4,{FAST_JUDGE}",
        "dialogue_store": "none",
    }
    model_args = f"model={SUPPORTER_MODEL},base_url={chat_url},num_concurrent=2,timeout=1,max_retries=6"
    return [
        *("--model", "local-chat-completions", "--model_args", model_args),
        # one card per language: lm-eval then skips its 100000-draw stderr bootstrap, which would dominate
        *("--tasks", "esc_eval", "--limit", "1", "--apply_chat_template", "--log_samples"),
        *("--metadata", json.dumps(meta)),
    ]


def run_esc(reply: Callable, card_dir: Path, output: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Run, int]:
    """One esc_eval run against a loopback server answering with ``reply``; fresh judge cache and judges."""
    monkeypatch.setenv("ESC_GUARD_CACHE", str(output / "cache"))
    monkeypatch.setattr(registry, "_BUILT", {})
    with LoopbackChatServer(reply, models=[ROLE_MODEL, SUPPORTER_MODEL, JUDGE_MODEL]) as server:
        run = run_cli(esc_args(server.chat_url, server.base_url, card_dir), output / "run")
        assert not server.errors, server.errors
        return run, len(server.chat_bodies())


def comparable(run: Run) -> dict[str, Any]:
    """Everything a reader takes from a run: the metric rows and every sample's transcript and verdicts."""
    samples = {task: [(s["doc"], s["resps"], s["filtered_resps"]) for s in rows] for task, rows in run.samples.items()}
    return {"results": run.results["results"], "samples": samples}


@pytest.mark.slow
def test_esc_eval_under_20_percent_faults_equals_a_fault_free_run(esc_data, tmp_path, monkeypatch):
    """Supporter, role-player and judge all behind a server failing 20% of attempts with every fault kind:
    the run completes, each faulted attempt is retried (the server receives exactly one extra request per
    fault), and the metric rows, transcripts and verdicts are identical to a fault-free run's. (The faults
    are chosen by a digest of each request, and the rate bounds below hold for the real cards' requests.)"""
    clean, clean_requests = run_esc(scripted, esc_data, tmp_path / "clean", monkeypatch)
    injector = FaultInjector(scripted)
    faulty, faulty_requests = run_esc(injector, esc_data, tmp_path / "faulty", monkeypatch)

    assert comparable(faulty) == comparable(clean)
    assert clean_requests == 2 * ROUNDS * 2 + 2 * 7  # 2 dialogues × rounds × 2 speakers + 2 × 7 judge requests
    assert faulty_requests == clean_requests + len(injector.injected)
    assert len(injector.attempts) == clean_requests, "every logical request was made, none twice after success"
    assert {kind for _, kind in injector.injected} == set(FAULT_KINDS)
    assert {model for model, _ in injector.injected} == {ROLE_MODEL, SUPPORTER_MODEL, JUDGE_MODEL}
    assert 0.15 * clean_requests <= len(injector.injected) <= 0.45 * clean_requests, len(injector.injected)
    texts = [t["text"] for rows in faulty.samples.values() for s in rows for t in json.loads(s["resps"][0][0])["turns"]]
    assert texts and all(texts), "no turn may be empty: a failed request must never become an empty reply"


MLLMGUARD_RECORDS = [
    {"config": dim, "prompt": f"prompt {i} about {dim}", "response": f"answer {i}"}
    for i, dim in enumerate(["privacy", "bias", "toxicity", "legality", "hallucination"] * 6)
]


def mllmguard_judge(base_url: str) -> LLMJudge:
    return LLMJudge({"base_url": base_url, "model": "mllmguard-judge", "cache": False} | parse(FAST_JUDGE))


def parse(kv: str) -> dict[str, Any]:
    return {k: float(v) for k, v in (item.split("=") for item in kv.split(","))}


def test_mllmguard_llm_judge_under_20_percent_faults_equals_a_fault_free_run():
    """The MLLMGuard LLM judge (30 records, 8 concurrent) behind the faulty server: same verdicts (score and raw
    reply) as without faults, one extra request per fault, all fault kinds seen."""
    with LoopbackChatServer(scripted) as server:
        clean = mllmguard_judge(server.base_url).verdicts(MLLMGUARD_RECORDS)
    injector = FaultInjector(scripted)
    with LoopbackChatServer(injector) as server:
        faulty = mllmguard_judge(server.base_url).verdicts(MLLMGUARD_RECORDS)
        received = len(server.chat_bodies())
    assert faulty == clean
    assert received == len(MLLMGUARD_RECORDS) + len(injector.injected)
    assert {kind for _, kind in injector.injected} >= {"429", "500", "drop", "truncated-json", "no-choices"}
    assert all(v.score is not None or v.raw for v in faulty)


# -- lm-eval's chat-completions backend, request by request ------------------------------------------------------


def chat_lm(base_url: str, **args: Any) -> Any:
    from lm_eval.models.openai_completions import LocalChatCompletion

    return LocalChatCompletion(model="m", base_url=base_url, tokenizer_backend=None, **args)


def generate(lm: Any, questions: list[str]) -> list[str]:
    """The bridge's path for one batch of histories (what the dialogue engine calls)."""
    from esc_guard_tasks.harness.lm_eval_chat import LMEvalChatModel

    speaker = LMEvalChatModel(lm, {"until": [], "max_gen_toks": 8}, seeding="request")
    return speaker.generate([[{"role": "user", "content": q}] for q in questions], list(range(len(questions))))


@pytest.mark.parametrize("body", [{"object": "error", "message": "overloaded"}, "null", "empty-choices"])
def test_a_reply_without_content_is_retried_never_an_empty_turn(body):
    """lm-eval alone returns '' for a 200 without choices or with null content (and crashes on choices: []):
    through the bridge such a reply is retried, then fails naming the endpoint, model and attempts."""

    def reply(request: dict[str, Any]) -> dict[str, Any]:
        if body in ("null", "empty-choices"):
            answer = chat_completion(request, "x")
            if body == "null":
                answer["choices"][0]["message"]["content"] = None
            else:
                answer["choices"] = []
            return answer
        return body

    with LoopbackChatServer(reply) as server:
        lm = chat_lm(server.chat_url, max_retries=1)
        with pytest.raises(ChatAPIError) as info:
            generate(lm, ["hello"])
        assert len(server.chat_bodies()) == 2
        assert f"{server.chat_url} (model 'm') failed after 2 attempts" in str(info.value)
    assert "no choices[0].message.content" in str(info.value)


def test_a_4xx_is_not_retried_and_names_the_server_message():
    """404 (a model the server does not serve) fails at once, with the server's message, instead of lm-eval's
    three identical attempts."""

    def reply(body: dict[str, Any]) -> str:
        raise LoopbackHTTPError(404, "The model `m` does not exist.")

    with LoopbackChatServer(reply) as server:
        with pytest.raises(ChatAPIError, match="after 1 attempt: HTTP 404: The model `m` does not exist"):
            generate(chat_lm(server.chat_url), ["hello"])
        assert len(server.chat_bodies()) == 1


def test_replies_keep_request_order_with_concurrency_and_the_payload_is_lm_evals():
    """num_concurrent=3: 6 requests, replies in request order; each body is what lm-eval itself would send
    (its own _create_payload: model, messages, max_tokens, temperature, stop, the per-request seed)."""

    def reply(body: dict[str, Any]) -> str:
        time.sleep(0.05 * (5 - int(body["messages"][0]["content"][1:])) / 5)
        return "re " + body["messages"][0]["content"]

    questions = [f"q{i}" for i in range(6)]
    with LoopbackChatServer(reply) as server:
        lm = chat_lm(server.chat_url, num_concurrent=3)
        assert generate(lm, questions) == [f"re {q}" for q in questions]
        bodies = sorted(server.chat_bodies(), key=lambda b: b["seed"])
    for i, body in enumerate(bodies):
        expected = lm._create_payload(
            [{"role": "user", "content": f"q{i}"}],
            generate=True,
            gen_kwargs={"until": [], "max_gen_toks": 8, "seed": i},
        )
        assert body == expected | {"stop": body["stop"]}
        assert body["seed"] == i and body["max_tokens"] == 8


# -- a dead endpoint --------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_esc_eval_with_a_dead_role_player_fails_naming_endpoint_and_attempts(card_dir, tmp_path):
    """The role-player's server refuses every connection: lm_eval raises ChatAPIError naming the endpoint, the
    role model and the 1 + max_retries attempts, well within the backoff budget; nothing is written as a result."""
    port = closed_port()
    dead = f"http://127.0.0.1:{port}/v1/chat/completions"
    with LoopbackChatServer(scripted) as server:
        args = esc_args(server.chat_url, server.base_url, card_dir)
        meta = json.loads(args[args.index("--metadata") + 1])
        meta["role_model_args"] = f"model={ROLE_MODEL},base_url={dead},max_retries=2"
        args[args.index("--metadata") + 1] = json.dumps(meta)
        started = time.monotonic()
        with pytest.raises(ChatAPIError) as info:
            run_cli(args, tmp_path / "out")
        elapsed = time.monotonic() - started
        assert server.chat_bodies() == [], "the supporter is never asked before the role-player's first turn"
    message = str(info.value)
    assert f"{dead} (model '{ROLE_MODEL}') failed after 3 attempts: ConnectionError" in message
    assert info.value.attempts == 3 and info.value.endpoint == dead
    assert elapsed < 40, elapsed  # lm-eval start-up ~15 s; backoff 0.5–1 s, then 1–2 s
    assert not list((tmp_path / "out").glob("**/results_*.json"))


def test_a_server_failing_forever_is_retried_with_bounded_backoff_then_named():
    """503 forever, max_retries=2: exactly 3 attempts, spaced by the jittered exponential backoff (0.5–1 s, then
    1–2 s), then ChatAPIError naming the endpoint, the model, the attempts and the server's last message."""

    def reply(body: dict[str, Any]) -> str:
        raise LoopbackHTTPError(503, "model overloaded")

    with LoopbackChatServer(reply) as server:
        started = time.monotonic()
        with pytest.raises(ChatAPIError) as info:
            generate(chat_lm(server.chat_url, max_retries=2), ["hello"])
        elapsed = time.monotonic() - started
        assert len(server.chat_bodies()) == 3
        assert str(info.value) == (
            f"chat-completions endpoint {server.chat_url} (model 'm') failed after 3 attempts:"
            " HTTP 503: model overloaded"
        )
    assert 1.5 <= elapsed < 4, elapsed
