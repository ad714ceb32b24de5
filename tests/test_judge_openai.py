"""The OpenAI-compatible judge backend, tested on the wire against servers bound to 127.0.0.1.

The loopback chat server records every request body, so these tests check what a served
ESC-RANK (``vllm serve --lora-modules fluency_en=… …``) would be asked: which model name
(adapter), exactly which messages, greedy decoding. Faults (429, 5xx, bodies that are not a
chat completion, a slow reply, dropped connections, unparseable JSON, Retry-After) are
injected to show that retries are bounded and invisible in the results, and a raw socket
server sees the HTTP headers, to show where the API key goes and where it never goes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from harness_runs import one_round_run, served_judge
from loopback_server import LoopbackChatServer, LoopbackHTTPError, chat_completion

from esc_guard_tasks.chat_api import ChatAPIError, retry_after_seconds
from esc_guard_tasks.esc_eval.judging import build_backend, score_dialogues
from esc_guard_tasks.esc_eval.protocol import Transcript
from esc_guard_tasks.esc_eval.rubric import dimensions, judge_query
from esc_guard_tasks.esc_eval.settings import ESCSettings
from esc_guard_tasks.judges import registry
from esc_guard_tasks.judges.base import JudgeRequest
from esc_guard_tasks.judges.openai_chat import OpenAIChatJudge

FAST = {"retry_backoff": 0.01, "max_retry_wait": 0.05}
FAST_ARGS = "retry_backoff=0.01,max_retry_wait=0.05"
INVALID_REPLIES = ("Score: 3 (0-4 scale)", "I cannot rate this dialogue.", "10", "")
SENTINEL = "sk-SENTINEL-7f3a9c1e5b2d4680"


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch):
    """No API key from the developer's shell reaches these tests (or the loopback servers)."""
    monkeypatch.delenv("ESC_EVAL_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def scripted(body: dict[str, Any]) -> str:
    """The judge server's reply: a digit 0–4, or (about one in seven) an invalid text; a function of the request."""
    key = body["model"] + "\n" + body["messages"][-1]["content"]
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16)
    return INVALID_REPLIES[(h // 7) % len(INVALID_REPLIES)] if h % 7 == 0 else str(h % 5)


def request_key(body: dict[str, Any]) -> str:
    return body["model"] + "\n" + body["messages"][-1]["content"]


def esc_rank_judge(base_url: str, extra: str = "") -> OpenAIChatJudge:
    """Built the way lm-eval builds it: from ESC-Eval settings (judge, judge_backend, judge_args)."""
    args = f"base_url={base_url},{FAST_ARGS}" + (f",{extra}" if extra else "")
    judge = build_backend(ESCSettings(judge="esc_rank", judge_backend="openai", judge_args=args))
    assert isinstance(judge, OpenAIChatJudge)
    return judge


def expected_score(reply: str) -> int | None:
    return int(reply.strip()) if reply.strip() in ("0", "1", "2", "3", "4") else None


# -- what goes on the wire ---------------------------------------------------------------------


def test_esc_rank_asks_each_adapter_with_the_exact_messages(transcripts, reference_prompts):
    """12 dialogues × 7 dimensions = 84 requests: each names its dimension's adapter (``fluency_en``… for EN,
    ``fluency``… for ZH) as the model, carries exactly [InternLM2's default system prompt, the byte-exact
    query], asks greedily (temperature 0); digit replies become scores, invalid replies stay invalid (never 0)."""
    meta = reference_prompts["internlm2_meta_instruction"]
    keys = reference_prompts["judge"]["adapter_keys"]
    with LoopbackChatServer(scripted) as server:
        verdicts = score_dialogues(esc_rank_judge(server.base_url), transcripts, "esc_rank")
        bodies = server.chat_bodies()

    assert len(bodies) == 84
    expected = Counter()
    for t in transcripts:
        for d in dimensions():
            adapter = keys[d.index] + ("_en" if t.language == "en" else "")
            expected[(adapter, json.dumps([meta, judge_query(t, d)], ensure_ascii=False))] += 1
    seen = Counter((b["model"], json.dumps([m["content"] for m in b["messages"]], ensure_ascii=False)) for b in bodies)
    assert seen == expected
    for body in bodies:
        assert set(body) == {"model", "messages", "temperature", "max_tokens"}
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert body["temperature"] == 0 and body["max_tokens"] == 16
    assert {b["model"] for b in bodies} == set(keys) | {f"{k}_en" for k in keys}
    assert any("\u200b" in b["messages"][1]["content"] for b in bodies), "zero-width spaces lost on the wire"

    invalid = 0
    for t, judged in zip(transcripts, verdicts, strict=True):
        for d, verdict in zip(dimensions(), judged, strict=True):
            body = {
                "model": keys[d.index] + ("_en" if t.language == "en" else ""),
                "messages": [{"content": judge_query(t, d)}],
            }
            assert verdict.raw == scripted(body)
            assert verdict.score == expected_score(verdict.raw)
            if verdict.score is None:
                invalid += 1
                assert verdict.raw in INVALID_REPLIES
    assert 3 <= invalid <= 30, invalid


def test_llm_rubric_asks_one_named_model_with_the_query_alone(transcripts):
    """judge=llm_rubric: every request goes to the ``model`` given in judge_args, with the query as the only
    message; the server root and the full endpoint URL are the same judge (same identity, same cache keys)."""
    with LoopbackChatServer(lambda body: "2") as server:
        judge = build_backend(
            ESCSettings(
                judge="llm_rubric", judge_backend="openai", judge_args=f"base_url={server.base_url},model=gpt-4"
            )
        )
        verdicts = score_dialogues(judge, transcripts[:1], "llm_rubric")
        bodies = server.chat_bodies()
        same = build_backend(
            ESCSettings(
                judge="llm_rubric", judge_backend="openai", judge_args=f"base_url={server.chat_url},model=gpt-4"
            )
        )
        assert same.identity() == judge.identity()
    assert [v.score for v in verdicts[0]] == [2] * 7
    assert {b["model"] for b in bodies} == {"gpt-4"}
    assert sorted(b["messages"][0]["content"] for b in bodies) == sorted(
        judge_query(transcripts[0], d) for d in dimensions()
    )
    assert all(len(b["messages"]) == 1 and b["messages"][0]["role"] == "user" for b in bodies)


def test_identity_is_what_determines_the_replies():
    """identity(): backend, endpoint, model template, max_tokens (and temperature 0); not concurrency,
    retries or timeouts, so retuning those keeps the cache."""
    a = OpenAIChatJudge("http://127.0.0.1:9/v1/", identity={"judge": "esc_rank"})
    b = OpenAIChatJudge("http://127.0.0.1:9/v1/chat/completions", num_concurrent=2, max_retries=1, timeout=3)
    assert a.identity() == {
        "backend": "openai",
        "base_url": "http://127.0.0.1:9/v1/chat/completions",
        "model": "{adapter}",
        "max_tokens": 16,
        "temperature": 0,
        "judge": "esc_rank",
    }
    assert {k: v for k, v in a.identity().items() if k != "judge"} == b.identity()
    assert OpenAIChatJudge("http://127.0.0.1:9/v1", max_tokens=4).identity()["max_tokens"] == 4


@pytest.mark.parametrize(
    ("judge", "args", "message"),
    [
        ("esc_rank", "base_url=http://127.0.0.1:9/v1,temperature=0.7,batch=2", "batch, temperature"),
        ("esc_rank", "model=x", "needs judge_args base_url"),
        ("esc_rank", "base_url=http://127.0.0.1:9/v1,model=esc-rank", "must contain {adapter}"),
        ("llm_rubric", "base_url=http://127.0.0.1:9/v1", "needs judge_args model="),
        ("llm_rubric", "base_url=http://127.0.0.1:9/v1,model={adapter}", "must not contain {adapter}"),
        ("esc_rank", "base_url=http://127.0.0.1:9/v1,api_key=sk-INLINE-SECRET", "read only from the environment"),
    ],
)
def test_bad_judge_args_are_rejected_clearly(judge, args, message):
    """Unknown, missing or contradictory judge_args fail before any request, naming the problem (never a value
    that could be a secret)."""
    with pytest.raises(ValueError) as info:
        build_backend(ESCSettings(judge=judge, judge_backend="openai", judge_args=args))
    assert message in str(info.value)
    assert "sk-INLINE-SECRET" not in str(info.value)


# -- faults and retries ------------------------------------------------------------------------


def test_injected_faults_and_a_timeout_are_retried_invisibly(transcripts):
    """About 30% of the 84 requests fail once (429, 500, 503, a body without choices, a null content) and one
    times out once (the server sleeps 1.5 s, timeout 0.5 s): the run completes, every request is sent exactly
    once more per fault, and the verdicts equal a fault-free run's."""
    with LoopbackChatServer(scripted) as server:
        clean = score_dialogues(esc_rank_judge(server.base_url), transcripts, "esc_rank")

    lock = threading.Lock()
    attempts: Counter[str] = Counter()
    slow = request_key({"model": "fluency_en", "messages": [{"content": judge_query(transcripts[0], dimensions()[0])}]})
    assert transcripts[0].language == "en"

    def faulty(body: dict[str, Any]) -> str | dict[str, Any]:
        key = request_key(body)
        with lock:
            attempts[key] += 1
            first = attempts[key] == 1
        if first and key == slow:
            time.sleep(1.5)
        elif first and planned_fault(key) is not None:
            fault = planned_fault(key)
            if isinstance(fault, int):
                raise LoopbackHTTPError(fault)
            return fault
        return scripted(body)

    started = time.monotonic()
    with LoopbackChatServer(faulty) as server:
        faulted = score_dialogues(esc_rank_judge(server.base_url, "timeout=0.5"), transcripts, "esc_rank")
        received = len(server.chat_bodies())
    elapsed = time.monotonic() - started

    faults = {key for key in attempts if planned_fault(key) is not None} | {slow}
    assert faulted == clean
    assert 0.2 * 84 <= len(faults) <= 0.4 * 84, len(faults)
    assert all(attempts[key] == (2 if key in faults else 1) for key in attempts)
    assert len(attempts) == 84 and received == 84 + len(faults)
    assert elapsed < 10, elapsed


def planned_fault(key: str) -> int | dict[str, Any] | None:
    """~30% of requests fail on their first attempt; which fault depends on the request."""
    h = int(hashlib.sha256(("fault:" + key).encode("utf-8")).hexdigest(), 16)
    if h % 10 >= 3:
        return None
    no_content = chat_completion({"model": "m"}, "x")
    no_content["choices"][0]["message"]["content"] = None
    return [429, 500, 503, {"object": "error", "message": "overloaded"}, no_content][(h // 10) % 5]


def test_a_request_that_always_fails_raises_naming_endpoint_model_and_attempts(transcripts):
    """One request answered 503 forever: after max_retries=3 the run raises within bounded time, naming the
    endpoint, the model and the 4 attempts made (exactly 4 reached the server), and the last error."""
    doomed = judge_query(transcripts[0], dimensions()[3])

    def reply(body: dict[str, Any]) -> str:
        if body["messages"][-1]["content"] == doomed:
            raise LoopbackHTTPError(503, "model is overloaded")
        return "1"

    started = time.monotonic()
    with LoopbackChatServer(reply) as server:
        judge, endpoint = esc_rank_judge(server.base_url, "max_retries=3"), server.chat_url
        with pytest.raises(ChatAPIError) as info:
            score_dialogues(judge, transcripts, "esc_rank")
        doomed_sent = sum(b["messages"][-1]["content"] == doomed for b in server.chat_bodies())
    elapsed = time.monotonic() - started
    text = str(info.value)
    assert endpoint in text and "'suggestion_en'" in text and "4 attempts" in text
    assert "HTTP 503: model is overloaded" in text
    assert info.value.attempts == 4 and doomed_sent == 4
    assert elapsed < 5, elapsed


def test_an_unreachable_server_fails_after_the_retries():
    """Connection refused on every attempt: ChatAPIError after 1 + max_retries attempts, quickly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = OpenAIChatJudge(f"http://127.0.0.1:{port}/v1", max_retries=2, timeout=2, **FAST)
    started = time.monotonic()
    with pytest.raises(ChatAPIError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions.*3 attempts.*ConnectionError"):
        judge.complete([JudgeRequest.chat([{"role": "user", "content": "q"}], "fluency")])
    assert time.monotonic() - started < 5


def test_a_4xx_other_than_429_fails_at_once():
    """404 (e.g. an adapter the server does not serve) is not retried: one attempt, the server's message shown."""

    def reply(body: dict[str, Any]) -> str:
        raise LoopbackHTTPError(404, f"The model `{body['model']}` does not exist.")

    with LoopbackChatServer(reply) as server:
        judge = OpenAIChatJudge(server.base_url, **FAST)
        with pytest.raises(ChatAPIError, match="after 1 attempt: HTTP 404: The model `tech_en` does not exist"):
            judge.complete([JudgeRequest.chat([{"role": "user", "content": "q"}], "tech_en")])
        assert len(server.chat_bodies()) == 1


class RawHTTPServer:
    """HTTP/1.1 on 127.0.0.1 over plain sockets: each connection gets ``script(index, headers, body)``'s answer,
    ``None`` = close without answering (a dropped connection), or (status, headers, raw body bytes)."""

    Answer = tuple[int, dict[str, str], bytes] | None

    def __init__(self, script: Callable[[int, dict[str, str], bytes], RawHTTPServer.Answer]):
        self.script = script
        self.seen: list[dict[str, str]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.stopping = False

    def __enter__(self) -> RawHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        socket.create_connection(self.sock.getsockname()).close()  # wakes accept(); close() alone does not
        self.thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        index = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.stopping:
                conn.close()
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:]
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
                while len(body) < int(headers.get("content-length", 0)):
                    body += conn.recv(65536)
                self.seen.append(headers)
                answer = self.script(index, headers, body)
                index += 1
                if answer is None:
                    continue
                status, extra, payload = answer
                fields = {"Content-Type": "application/json", "Content-Length": str(len(payload))} | extra
                response = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
                conn.sendall(response.encode("latin-1") + b"Connection: close\r\n\r\n" + payload)


def ok(text: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, json.dumps(chat_completion({"model": "m"}, text)).encode()


def test_dropped_connections_unparseable_json_and_retry_after():
    """A dropped connection, a 200 whose body is not JSON, then a 429 with ``Retry-After: 0.4`` are all retried;
    the fourth attempt's reply is returned, after at least the 0.4 s the server asked for (the backoff alone
    would be milliseconds). A huge Retry-After is capped at max_retry_wait."""
    script = [None, (200, {}, b'{"choices": [{"message": '), (429, {"Retry-After": "0.4"}, b"{}"), ok("3")]
    request = JudgeRequest.chat([{"role": "user", "content": "q"}], "overall")
    with RawHTTPServer(lambda i, h, b: script[i]) as server:
        judge = OpenAIChatJudge(server.base_url, retry_backoff=0.001, max_retry_wait=2)
        started = time.monotonic()
        assert judge.complete([request]) == ["3"]
        assert time.monotonic() - started >= 0.4
        assert len(server.seen) == 4

    capped = [(429, {"Retry-After": "3600"}, b"{}"), ok("1")]
    with RawHTTPServer(lambda i, h, b: capped[i]) as server:
        judge = OpenAIChatJudge(server.base_url, retry_backoff=0.001, max_retry_wait=0.2)
        started = time.monotonic()
        assert judge.complete([request]) == ["1"]
        assert time.monotonic() - started < 2


def test_retry_after_forms():
    """Retry-After in seconds, as an HTTP date, or OpenAI's retry-after-ms; garbage is ignored."""
    assert retry_after_seconds({"Retry-After": "7"}) == 7
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None


# -- concurrency -------------------------------------------------------------------------------


@pytest.mark.parametrize("num_concurrent", [1, 4])
def test_requests_overlap_up_to_num_concurrent_and_replies_keep_order(num_concurrent):
    """16 requests whose replies take 0.02–0.11 s (later ones in each wave faster): the server sees at most (and,
    for 4, exactly) num_concurrent requests in flight, answers arrive out of order, replies come back in
    request order."""
    lock = threading.Lock()
    state = {"now": 0, "max": 0}
    finished: list[int] = []

    def reply(body: dict[str, Any]) -> str:
        index = int(body["messages"][-1]["content"].split()[-1])
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.02 + 0.03 * (3 - index % 4))
        with lock:
            state["now"] -= 1
            finished.append(index)
        return f"reply to {index}"

    requests = [JudgeRequest.chat([{"role": "user", "content": f"item {i}"}], "human_en") for i in range(16)]
    with LoopbackChatServer(reply) as server:
        judge = OpenAIChatJudge(server.base_url, num_concurrent=num_concurrent, **FAST)
        replies = judge.complete(requests)
    assert replies == [f"reply to {i}" for i in range(16)]
    assert state["max"] == num_concurrent
    if num_concurrent > 1:
        assert finished != sorted(finished)


# -- the API key -------------------------------------------------------------------------------


def test_api_key_reaches_the_server_and_nothing_else(monkeypatch, caplog):
    """ESC_EVAL_JUDGE_API_KEY (preferred over OPENAI_API_KEY) is sent as ``Authorization: Bearer …`` and appears
    nowhere in identity(), in the error of a failing run (even when the server echoes it), its traceback, or
    the logs (DEBUG, all loggers); OPENAI_API_KEY is the fallback; no key, no Authorization header."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ESC_EVAL_JUDGE_API_KEY", SENTINEL)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-fallback")
    request = JudgeRequest.chat([{"role": "user", "content": "q"}], "empathic_en")
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {SENTINEL}"}}).encode()
    script = [ok("2"), (500, {}, echo), (500, {}, echo), (401, {}, echo)]
    with RawHTTPServer(lambda i, h, b: script[i]) as server:
        judge = OpenAIChatJudge(server.base_url, max_retries=1, **FAST)
        assert judge.complete([request]) == ["2"]
        with pytest.raises(ChatAPIError) as retried:
            judge.complete([request])
        with pytest.raises(ChatAPIError) as fatal:
            judge.complete([request])
        seen = list(server.seen)
    assert [h["authorization"] for h in seen] == [f"Bearer {SENTINEL}"] * 4
    assert "2 attempts" in str(retried.value) and "HTTP 401" in str(fatal.value)
    for error in (retried.value, fatal.value):
        assert SENTINEL not in "".join(traceback.format_exception(error)) + repr(error)
    assert SENTINEL not in json.dumps(judge.identity()) + repr(judge)
    assert "Judge request to" in caplog.text and SENTINEL not in caplog.text

    monkeypatch.delenv("ESC_EVAL_JUDGE_API_KEY")
    with RawHTTPServer(lambda i, h, b: ok("0")) as server:
        OpenAIChatJudge(server.base_url).complete([request])
        assert server.seen[0]["authorization"] == "Bearer sk-openai-fallback"
    monkeypatch.delenv("OPENAI_API_KEY")
    with RawHTTPServer(lambda i, h, b: ok("0")) as server:
        OpenAIChatJudge(server.base_url).complete([request])
        assert "authorization" not in server.seen[0]


# -- through lm-eval -------------------------------------------------------------------------


def test_lm_eval_esc_eval_with_a_served_judge_and_the_cache(tiny_model, card_dir, tmp_path, monkeypatch):
    """lm_eval --tasks esc_eval with judge=esc_rank, judge_backend=openai: 2 dialogues × 7 = 14 judge requests
    reach the server (EN ones to ``*_en`` adapters), dimension rows appear, the key is nowhere in the outputs;
    a second identical run (fresh process-level judge, same disk cache) sends zero requests."""
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ESC_EVAL_JUDGE_API_KEY", SENTINEL)
    with LoopbackChatServer(scripted) as server:
        base_url = server.base_url
        run = {"data_dir": str(card_dir), "limit": 1, **served_judge(server)}
        monkeypatch.setattr(registry, "_BUILT", {})
        first = one_round_run(tiny_model, tmp_path / "first", "--log_samples", **run)
        after_first = len(server.chat_bodies())
        models = Counter(b["model"].endswith("_en") for b in server.chat_bodies())
        monkeypatch.setattr(registry, "_BUILT", {})
        second = one_round_run(tiny_model, tmp_path / "second", "--log_samples", **run)
        after_second = len(server.chat_bodies())

    assert after_first == 14 and models == {True: 7, False: 7}
    assert after_second == 14, "the second run should be served from the judge cache"
    rows = first.results["results"]
    for task in ("esc_eval", "esc_eval_en", "esc_eval_zh"):
        for metric in ("fluency", "expression", "empathy", "information", "skillful", "humanoid", "overall"):
            value = rows[task][f"{metric},none"]
            assert math.isnan(value) or 0 <= value <= 100
        assert 0 <= rows[task]["invalid_rate,none"] <= 1
    assert json.dumps(second.results["results"], sort_keys=True) == json.dumps(rows, sort_keys=True)
    record = json.loads(first.samples["esc_eval_en"][0]["filtered_resps"][0])
    transcript = Transcript.from_dict(record["transcript"])
    for d, verdict in zip(dimensions(), record["verdicts"], strict=True):
        body = {"model": f"{d.key}_en", "messages": [{"content": judge_query(transcript, d)}]}
        assert verdict["raw"] == scripted(body) and verdict["score"] == expected_score(verdict["raw"])
    judge_meta = first.results["configs"]["esc_eval_en"]["metadata"]["esc_eval"]["judge"]
    assert judge_meta["backend"] == "openai" and judge_meta["args"]["base_url"] == base_url
    written = "".join(p.read_text("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file())
    assert SENTINEL not in written
