"""Tokens per role: what a run sent and received, counted where the count is exact, and what it cost.

The API counts are checked against the ``usage`` blocks a loopback server actually sent (with numbers it
draws itself, so no formula of the package can match them by accident); the hf counts against the model's
own tokenizer applied to the exact contexts and replies lm-eval's ``generate_until`` saw.
"""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from harness_runs import run_cli, tiny_args
from loopback_server import LoopbackChatServer, chat_completion
from transformers import AutoTokenizer

from esc_guard_tasks.chat_api import ChatCompletionsClient
from esc_guard_tasks.usage import RoleUsage, TokenCount, check_prices, costs, usage_line, usage_lines

ROLE_MODEL = "seeker-model"
SUPPORTER_MODEL = "supporter-model"
JUDGE_MODEL = "judge-model"
ROLE_OF_MODEL = {ROLE_MODEL: "role_player", SUPPORTER_MODEL: "supporter", JUDGE_MODEL: "judge"}
TASKS = ("esc_eval_demo_en", "esc_eval_demo_zh")
PRICES = {"role_player": [0.5, 1.5], "supporter": [2.0, 8.0], "judge": [3.0, 15.0]}
ROUNDS = 2
LIMIT = 2


class UsageServer:
    """Loopback replies with ``usage`` numbers drawn at random, summed per model as they are sent."""

    def __init__(self) -> None:
        self.sent: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._random = random.Random(7)
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body["model"]
        # every dialogue its own turns, so every judge request is a distinct one
        content = "3" if model == JUDGE_MODEL else f"{model} answers {hash(json.dumps(body['messages'])) % 10**6}"
        reply = chat_completion(body, content)
        with self._lock:
            prompt, completion = self._random.randint(1, 5000), self._random.randint(1, 500)
            totals = self.sent[model]
            totals[0], totals[1], totals[2] = totals[0] + prompt, totals[1] + completion, totals[2] + 1
        reply["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return reply


def api_args(url: str, store: Path) -> list[str]:
    meta = {
        "dialogue_store": str(store),
        "role_model": "local-chat-completions",
        "role_model_args": f"model={ROLE_MODEL},base_url={url}",
        "rounds": ROUNDS,
        "judge": "llm_rubric",
        "judge_backend": "openai",
        "judge_args": f"base_url={url},model={JUDGE_MODEL}",
        "prices": PRICES,
    }
    return [
        "--model",
        "local-chat-completions",
        "--model_args",
        f"model={SUPPORTER_MODEL},base_url={url}",
        "--tasks",
        "esc_eval_demo",
        "--limit",
        str(LIMIT),
        "--apply_chat_template",
        "--metadata",
        json.dumps(meta),
    ]


def usage_of_run(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task: results["configs"][task]["metadata"]["esc_eval"]["usage"] for task in TASKS}


def summed(records: dict[str, dict[str, Any]], role: str) -> RoleUsage:
    return sum((RoleUsage.from_dict(r[role]) for r in records.values()), RoleUsage())


def test_an_api_usage_block_is_counted_and_a_missing_one_is_unmeasured():
    """A reply's ``usage`` block is its token count; a reply without one is sent but unmeasured, never 0 tokens."""

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        answer = chat_completion(body, "ok")
        if body["messages"][0]["content"] == "no usage":
            del answer["usage"]
        else:
            answer["usage"] = {"prompt_tokens": 11, "completion_tokens": 4}
        return answer

    with LoopbackChatServer(reply) as server:
        client = ChatCompletionsClient(server.chat_url, who="test", num_concurrent=2)
        payloads = [{"model": "m", "messages": [{"role": "user", "content": text}]} for text in ("a", "no usage", "b")]
        completions = client.complete_counted(payloads)
    assert [c.tokens for c in completions] == [TokenCount(11, 4), None, TokenCount(11, 4)]
    assert client.tokens.total() == RoleUsage(prompt_tokens=22, completion_tokens=8, requests=3, unmeasured=1)


def test_tokens_per_role_equal_the_servers_usage_and_cache_hits_are_not_sent(tmp_path: Path, capsys):
    """Role-player, supporter and judge on one server: each role's totals over the tasks equal the sums of the
    ``usage`` blocks served to its model, each task's cost is its tokens at the given prices, and one line per
    task is printed after the results table. Rerun over the same dialogue store and judge cache, nothing is
    sent: every turn counts as resumed, every judge reply as cached, and no role is billed a token."""
    server_usage = UsageServer()
    with LoopbackChatServer(server_usage, models=list(ROLE_OF_MODEL)) as server:
        first = run_cli(api_args(server.chat_url, tmp_path / "d.sqlite"), tmp_path / "first")
        printed = capsys.readouterr().out
        records = usage_of_run(first.results)
        dialogues = LIMIT * len(TASKS)
        for model, role in ROLE_OF_MODEL.items():
            prompt, completion, requests = server_usage.sent[model]
            assert summed(records, role) == RoleUsage(prompt, completion, requests)
        assert server_usage.sent[ROLE_MODEL][2] == server_usage.sent[SUPPORTER_MODEL][2] == dialogues * ROUNDS
        assert server_usage.sent[JUDGE_MODEL][2] == dialogues * 7
        for task, record in records.items():
            expected = costs({r: RoleUsage.from_dict(record[r]) for r in PRICES}, PRICES)
            assert record["cost"]["total"] == pytest.approx(sum(expected[r] for r in PRICES))
            assert {r: record["cost"][r] for r in PRICES} == pytest.approx({r: expected[r] for r in PRICES})
            line = usage_line(task, record)
            assert line in printed and printed.index(line) > printed.index("Tasks")
            assert "est. cost" in line

        before = len(server.chat_bodies())
        second = run_cli(api_args(server.chat_url, tmp_path / "d.sqlite"), tmp_path / "second")
        assert len(server.chat_bodies()) == before, "a fully stored, fully cached rerun sends nothing"
    again = usage_of_run(second.results)
    assert summed(again, "role_player") == RoleUsage(reused=dialogues * ROUNDS)
    assert summed(again, "supporter") == RoleUsage(reused=dialogues * ROUNDS)
    assert summed(again, "judge") == RoleUsage(reused=dialogues * 7)
    assert all(record["cost"]["total"] == 0 for record in again.values())


@pytest.mark.slow
def test_hf_speakers_are_counted_with_their_own_tokenizer(tiny_model: Path, tmp_path: Path, monkeypatch):
    """A tiny hf supporter and role-player: each role's prompt tokens equal the tokenizer's length of every
    context lm-eval's ``generate_until`` was given, and its completion tokens the length of every reply it
    returned; every turn was measured. Without a judge, no judge usage is recorded."""
    from lm_eval.models.huggingface import HFLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    expected: dict[str, RoleUsage] = defaultdict(RoleUsage)
    original = HFLM.generate_until

    def spy(self, requests, disable_tqdm=False):
        replies = original(self, requests, disable_tqdm=disable_tqdm)
        contexts = [r.args[0] for r in requests]
        role = "supporter" if "You are a helpful assistant!" in contexts[0] else "role_player"
        expected[role] += RoleUsage.of(
            TokenCount(len(tokenizer(c)["input_ids"]), len(tokenizer(r)["input_ids"]))
            for c, r in zip(contexts, replies, strict=True)
        )
        return replies

    monkeypatch.setattr(HFLM, "generate_until", spy)
    args = tiny_args(tiny_model, tasks="esc_eval_demo", limit=LIMIT, rounds=ROUNDS)
    run = run_cli([*args, "--apply_chat_template", "--log_samples"], tmp_path / "out")

    turns = [t for task in TASKS for transcript in run.transcripts(task) for t in transcript["turns"]]
    assert not any(t["prompt_truncated"] for t in turns), "the scenario must not cut prompts"
    records = usage_of_run(run.results)
    for role in ("role_player", "supporter"):
        assert summed(records, role) == expected[role]
        assert expected[role].requests == LIMIT * len(TASKS) * ROUNDS and expected[role].prompt_tokens > 0
    assert all("judge" not in record for record in records.values())


def test_prices_name_the_bad_role_and_the_line_says_what_was_not_measured():
    """Prices are [prompt, completion] per million tokens for a known role, else an error naming it; the
    printed line shows unmeasured, resumed and cached work beside the tokens."""
    with pytest.raises(ValueError, match="unknown role 'judges'"):
        check_prices({"judges": [1, 2]})
    with pytest.raises(ValueError, match="supporter must be"):
        check_prices({"supporter": [1]})
    usage = {"supporter": RoleUsage(1_000_000, 500_000, 10, 2, 0), "judge": RoleUsage(0, 0, 0, 0, 70)}
    priced = costs(usage, {"supporter": [2.0, 8.0]})
    assert priced == {"supporter": 6.0, "total": 6.0}
    record = {role: u.to_dict() for role, u in usage.items()}
    line = usage_line("t", record)
    assert "supporter 1,000,000 in / 500,000 out (10 sent, 2 unmeasured)" in line
    assert "judge 0 in / 0 out (0 sent, 70 cached)" in line
    results = {"results": {"t": {}}, "configs": {"t": {"metadata": {"esc_eval": {"usage": record}}}}}
    assert usage_lines(results) == [line]


@pytest.mark.slow
def test_the_hf_judge_counts_its_prompt_and_generated_tokens(tiny_model: Path):
    """The in-process judge counts, per request, the prompt under its chat template and the tokens it generated
    up to and including the end token, whatever else shares the batch; a cached rerun counts nothing as sent."""
    import torch
    from transformers import AutoModelForCausalLM

    from esc_guard_tasks.judges.base import JudgeRequest
    from esc_guard_tasks.judges.cache import CachedJudge
    from esc_guard_tasks.judges.hf_lora import HFLoraJudge
    from esc_guard_tasks.usage import usage_of

    texts = ["I feel low.", "My exams worry me a lot and I cannot sleep at night.", "Thanks."]
    requests = [JudgeRequest.chat([{"role": "user", "content": t}]) for t in texts]
    judge = HFLoraJudge(str(tiny_model), device="cpu", batch_size=3, max_new_tokens=5)
    cached = CachedJudge(judge)
    cached.complete(requests)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    expected = []
    for request in requests:  # one at a time: no padding can blur the count
        text = tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, do_sample=False, max_new_tokens=5, eos_token_id=judge.eos_ids)
        new = out[0, ids.shape[1] :].tolist()
        stop = next((i + 1 for i, t in enumerate(new) if t in judge.eos_ids), len(new))
        expected.append(TokenCount(ids.shape[1], stop))
    assert usage_of(cached) == RoleUsage.of(expected)
    cached.complete(requests)
    assert usage_of(cached) == RoleUsage.of(expected) + RoleUsage(reused=len(requests))


def test_the_report_table_and_page_show_the_recorded_usage(tmp_path: Path):
    """``report table`` adds a table of tokens per task and role (with the estimated cost when the run had
    prices) after the scores (in CSV, a file of its own beside the scores' file, which stays one parseable
    table), and the HTML page a section with the same numbers; a run without usage gets neither."""
    import pandas as pd
    from report_fixtures import esc_row, write_run

    from esc_guard_tasks.cli import main
    from esc_guard_tasks.report.html import build_report
    from esc_guard_tasks.report.runs import load_runs
    from esc_guard_tasks.report.table import USAGE_CAPTION, leaderboard
    from esc_guard_tasks.usage import usage_record

    usage = {
        "role_player": RoleUsage(1234, 56, 8),
        "supporter": RoleUsage(2345, 67, 8, 2),
        "judge": RoleUsage(reused=56),
    }
    record = usage_record(usage, {"supporter": [2.0, 8.0]})
    with_usage, _ = write_run(tmp_path / "a", "model-a", {"esc_eval_en": esc_row({"fluency": 50.0})})
    results = json.loads(with_usage.read_text("utf-8"))
    results["configs"]["esc_eval_en"]["metadata"] = {"esc_eval": {"usage": record}}
    with_usage.write_text(json.dumps(results), "utf-8")
    without, _ = write_run(tmp_path / "b", "model-b", {"esc_eval_en": esc_row({"fluency": 60.0})})

    assert USAGE_CAPTION in leaderboard(load_runs([with_usage]), "markdown")
    main(["report", "table", str(with_usage), "--format", "csv", "--output", str(tmp_path / "table.csv")])
    assert list(pd.read_csv(tmp_path / "table.csv")["task"]) == ["esc_eval_en"]
    text = (tmp_path / "table.usage.csv").read_text("utf-8")
    assert "model,task,role,prompt_tokens,completion_tokens,requests,unmeasured,reused,est. cost" in text
    assert "esc_eval_en,supporter,2345,67,8,2,0,0.01" in text  # (2345 * 2 + 67 * 8) / 1e6, two decimals
    assert "esc_eval_en,judge,0,0,0,0,56," in text
    assert USAGE_CAPTION not in leaderboard(load_runs([without]), "markdown")

    page = build_report(load_runs([with_usage, without]))
    assert "Tokens per role" in page and "2,345" in page and "1,234" in page
    assert "Tokens per role" not in build_report(load_runs([without]))


def test_mllmguard_prices_come_from_metadata_or_the_environment_and_bad_ones_name_their_source():
    """MLLMGuard's ``prices`` is the judge's [prompt, completion] per million tokens, from the task metadata or
    MLLMGUARD_PRICES (JSON); any other role or shape is an error naming where it came from."""
    from esc_guard_tasks.mllmguard.settings import TaskSettings

    settings = TaskSettings.resolve("mllmguard_privacy", "privacy", {"prices": {"judge": [1, 2]}}, {})
    assert settings.price_table == {"judge": [1.0, 2.0]}
    from_env = TaskSettings.resolve("mllmguard_privacy", "privacy", {}, {"MLLMGUARD_PRICES": '{"judge": [3, 4.5]}'})
    assert from_env.price_table == {"judge": [3.0, 4.5]}
    assert TaskSettings.resolve("mllmguard_privacy", "privacy", {}, {}).price_table == {}
    with pytest.raises(ValueError, match="MLLMGUARD_PRICES: prices: unknown role 'supporter'"):
        TaskSettings.resolve("mllmguard_privacy", "privacy", {}, {"MLLMGUARD_PRICES": '{"supporter": [1, 2]}'})
    with pytest.raises(ValueError, match="metadata 'prices' of mllmguard_privacy"):
        TaskSettings.resolve("mllmguard_privacy", "privacy", {"prices": "[1, 2]"}, {})
