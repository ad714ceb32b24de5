"""Context overflow made visible: which dialogue prompts lm-eval cut from the left, counted per turn and speaker.

lm-eval's hf backend fits each prompt into ``max_length - max_gen_toks`` tokens by cutting it from the left. The
task must never cut differently, only say which turns lost the start of their prompt: each turn records it
(and the dialogue store keeps it, so a resumed run reports the same), every task prints ``truncated_turn_rate``,
and one warning names the speaker, the count and the fix.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from harness_runs import run_cli, tiny_args
from transformers import AutoTokenizer

from esc_guard_tasks.dialogue.store import SQLiteDialogueStore
from esc_guard_tasks.esc_eval.protocol import Transcript, Turn
from esc_guard_tasks.harness.lm_eval_context import report_truncation
from esc_guard_tasks.metrics.esc_eval import truncated_turn_rate

MAX_LENGTH = 80
MAX_GEN_TOKS = 6  # tiny_args' --gen_kwargs and role_gen_kwargs


@pytest.fixture()
def generate_contexts(monkeypatch) -> list[tuple[str, list[str]]]:
    """Every HFLM.generate_until call as (speaker, contexts), in call order."""
    from lm_eval.models.huggingface import HFLM

    calls: list[tuple[str, list[str]]] = []
    original = HFLM.generate_until

    def spy(self, requests, disable_tqdm=False):
        contexts = [r.args[0] for r in requests]
        calls.append(("supporter" if "You are a helpful assistant!" in contexts[0] else "seeker", contexts))
        return original(self, requests, disable_tqdm=disable_tqdm)

    monkeypatch.setattr(HFLM, "generate_until", spy)
    return calls


def test_turns_whose_prompt_overflowed_are_counted_and_warned_about(
    tiny_model, tmp_path, generate_contexts, caplog, capfd
):
    """A supporter and a role-player given ``max_length=80``: a turn is marked truncated exactly when its
    prompt, encoded by the model's tokenizer, is longer than 80 - 6 tokens (what lm-eval cuts); each task prints
    ``truncated_turn_rate`` = the share of such turns; one warning names the speakers, the counts and the fix."""
    caplog.set_level(logging.INFO)
    model_args = f"pretrained={tiny_model},max_length={MAX_LENGTH}"
    args = tiny_args(tiny_model, tasks="esc_eval_demo", limit=2, rounds=2, role_model_args=model_args)
    args[args.index("--model_args") + 1] = model_args
    run = run_cli([*args, "--apply_chat_template", "--log_samples"], tmp_path / "out")

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    budget = MAX_LENGTH - MAX_GEN_TOKS
    expected: Counter[tuple[int, bool]] = Counter()
    for call, (_, contexts) in enumerate(generate_contexts):
        expected.update((call, len(tokenizer(c)["input_ids"]) > budget) for c in contexts)
    recorded: Counter[tuple[int, bool]] = Counter()
    rows = run.results["results"]
    for task in ("esc_eval_demo_en", "esc_eval_demo_zh"):
        rates = []
        for sample in run.samples[task]:
            transcript = json.loads(sample["resps"][0][0])
            flags = [t["prompt_truncated"] for t in transcript["turns"]]
            recorded.update(enumerate(flags))
            assert sample["truncated_turn_rate"] == pytest.approx(sum(flags) / len(flags))
            rates.append(sum(flags) / len(flags))
        assert rows[task]["truncated_turn_rate,none"] == pytest.approx(sum(rates) / len(rates))
    assert recorded == expected
    assert {cut for _, cut in expected} == {True, False}, "the scenario needs cut and whole prompts"
    assert 0 < rows["esc_eval_demo"]["truncated_turn_rate,none"] < 1

    logs = caplog.text + capfd.readouterr().err
    assert "Left truncation applied" in logs, "lm-eval itself cut the prompts the task counted"
    warnings = [line for line in logs.splitlines() if "were cut from the left by lm-eval" in line]
    assert len(warnings) == 1, "one warning per run (lm-eval logs its own loggers to stderr)"
    seeker_cut = sum(cut for (call, cut) in expected.elements() if generate_contexts[call][0] == "seeker")
    assert f"role-player: {seeker_cut} of 8 turns" in warnings[0]
    assert "max_length" in warnings[0] and "fewer rounds" in warnings[0] and "max_gen_toks" in warnings[0]


def test_an_unmeasured_backend_is_said_once_and_left_out_of_the_rate(caplog):
    """Turns an API backend produced carry no flag: the rate counts only measured turns (no row when none is),
    the JSON keeps the reference's turn shape, and the log says once per speaker that it cannot tell."""
    caplog.set_level(logging.INFO)
    api = Transcript(1, "en", "hi", [Turn("seeker", "a", None), Turn("supporter", "b", None)])
    mixed = Transcript(2, "en", "hi", [Turn("seeker", "a", True), Turn("supporter", "b", None)])
    assert truncated_turn_rate(api) is None and truncated_turn_rate(mixed) == 1.0
    assert json.loads(api.to_json())["turns"] == [
        {"speaker": "seeker", "text": "a"},
        {"speaker": "supporter", "text": "b"},
    ]
    assert Transcript.from_json(mixed.to_json()) == mixed
    report_truncation([api, api], {"seeker": "vllm", "supporter": "local-chat-completions"})
    told = [r.getMessage() for r in caplog.records if "cannot be told" in r.getMessage()]
    assert len(told) == 2 and any("local-chat-completions" in t for t in told)


def test_the_store_keeps_each_turns_flag_for_a_resumed_run(tmp_path: Path):
    """A resumed run reads back whether each stored turn's prompt was cut (True/False/unknown), so its
    truncated_turn_rate equals an uninterrupted run's; a turn saved again replaces its flag."""
    store = SQLiteDialogueStore(tmp_path / "d.sqlite")
    store.save([("k", 0, Turn("seeker", "a", True)), ("k", 1, Turn("supporter", "b", False))])
    store.save([("k", 2, Turn("seeker", "c", None))])
    store.close()
    store = SQLiteDialogueStore(tmp_path / "d.sqlite")
    assert [t.prompt_truncated for t in store.load(["k"])["k"]] == [True, False, None]
    store.save([("k", 0, Turn("seeker", "a", None))])
    assert [t.prompt_truncated for t in store.load(["k"])["k"]] == [None, False, None]
