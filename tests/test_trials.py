"""ESC-Eval trials: each card played ``trials`` times with its own reproducible seeds, all in the same batches.

Unit tests drive the engine with scripted speakers and a real store, and the aggregations with hand-made items;
the CLI tests run the real ``lm_eval`` with the tiny model (role-player and supporter) and a loopback judge.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import pickle
import statistics
from typing import Any

import numpy as np
import pytest
from harness_runs import run_cli, tiny_args
from lm_eval.api.metrics import bootstrap_stderr, nanmean
from loopback_server import LoopbackChatServer

from esc_guard_tasks.dialogue.store import SQLiteDialogueStore
from esc_guard_tasks.esc_eval.cards import load_card_dataset
from esc_guard_tasks.esc_eval.dialogue import DialogueSetup, dialogue_key, dialogue_seed
from esc_guard_tasks.esc_eval.dialogue import EscDialogueEngine as DialogueEngine
from esc_guard_tasks.esc_eval.protocol import Card
from esc_guard_tasks.esc_eval.settings import ESCSettings
from esc_guard_tasks.judges import registry
from esc_guard_tasks.metrics.esc_eval import CardValue, DialogueScores, mean_of_dimensions, trial_sd

ROUNDS = 2
BOOTSTRAP_ITERS = 1000  # lm-eval's stderr resamples in the CLI runs (default 100000: most of a tiny run's time)
IDENTITY = {"role_player": "scripted", "supporter": "scripted"}


class SeedEcho:
    """A sampling speaker stand-in: the reply is a digest of the history and the seed; records every batch's seeds."""

    def __init__(self, name: str):
        self.name = name
        self.seeds: list[list[int]] = []

    def generate(self, conversations, seeds):
        self.seeds.append(list(seeds))
        return [
            f"{self.name} {hashlib.sha1(json.dumps([c, s]).encode()).hexdigest()[:10]}"
            for c, s in zip(conversations, seeds, strict=True)
        ]


def _setups(trials: range, cards: int = 3) -> list[DialogueSetup]:
    return [
        DialogueSetup(Card(id=i, language="en" if i % 2 else "zh", base=f"card {i}"), "SYS", trial)
        for i in range(cards)
        for trial in trials
    ]


def _run(setups: list[DialogueSetup], store=None) -> tuple[list[str], SeedEcho, SeedEcho]:
    role, supporter = SeedEcho("seeker"), SeedEcho("supporter")
    engine = DialogueEngine(role, supporter, rounds=ROUNDS, seed=5, store=store, identity=IDENTITY)
    return [t.to_json() for t in engine.run(setups)], role, supporter


# ---------------------------------------------------------------- settings and docs


def test_trials_setting_is_an_integer_of_at_least_one():
    """trials comes from --metadata or ESC_EVAL_TRIALS (default 1) and anything but an integer >= 1 is refused
    before any model loads, naming the key."""
    assert ESCSettings.from_sources({}, {}).trials == 1
    assert ESCSettings.from_sources({}, {"ESC_EVAL_TRIALS": "3"}).trials == 3
    assert ESCSettings.from_sources({"trials": 2}, {"ESC_EVAL_TRIALS": "3"}).trials == 2
    for bad in (0, -1, 2.5, "three", True):
        with pytest.raises(ValueError, match="'trials': must be"):
            ESCSettings.from_sources({"trials": bad}, {})


def test_one_doc_per_card_and_trial_card_by_card(card_dir):
    """With trials=3 each card gives three consecutive docs with trials 0, 1, 2; with trials=1 the docs are exactly
    those of a run without the setting (no trial column), so a single-trial run's docs and hashes are unchanged."""
    plain = load_card_dataset("en", data_dir=str(card_dir))["test"].to_list()
    assert plain == load_card_dataset("en", data_dir=str(card_dir), trials=1)["test"].to_list()
    assert all("trial" not in row for row in plain)
    three = load_card_dataset("en", data_dir=str(card_dir), trials=3)["test"].to_list()
    assert three == [row | {"trial": trial} for row in plain for trial in range(3)]


# ---------------------------------------------------------------- the engine and the store


def test_trial_zero_keeps_the_single_trial_seed_and_store_key():
    """Trial 0's seed and store key are those of a dialogue made before trials existed (existing stores stay
    valid); every other trial has a seed and key of its own."""
    card = Card(id=7, language="en", base="b")
    assert dialogue_seed(5, card, 0) == dialogue_seed(5, card)
    assert dialogue_key(IDENTITY, 5, card, "SYS", 0) == dialogue_key(IDENTITY, 5, card, "SYS")
    assert len({dialogue_seed(5, card, t) for t in range(3)}) == 3
    assert len({dialogue_key(IDENTITY, 5, card, "SYS", t) for t in range(3)}) == 3


def test_trials_share_the_batches_with_distinct_reproducible_seeds():
    """Three trials of three cards: every speaker call holds all nine dialogues (never one trial after another),
    each with its own seed; the same setup gives the same dialogues, and trials of a card differ."""
    transcripts, role, supporter = _run(_setups(range(3)))
    assert [len(s) for s in role.seeds + supporter.seeds] == [9] * (2 * ROUNDS)
    assert all(len(set(seeds)) == 9 for seeds in role.seeds + supporter.seeds)
    assert transcripts == _run(_setups(range(3)))[0]
    assert len(set(transcripts)) == 9


def test_a_single_trial_run_is_the_first_trial_of_a_three_trial_run_and_resume_works_per_trial(tmp_path):
    """A 1-trial run's dialogues are trial 0 of a 3-trial run: after it, the 3-trial run over the same store
    generates exactly trials 1 and 2 (in shared batches); killed before, a rerun generates only missing trials."""
    store = SQLiteDialogueStore(tmp_path / "d.sqlite")
    single, _, _ = _run(_setups(range(1)), store)
    three, role, supporter = _run(_setups(range(3)), store)
    fresh, _, _ = _run(_setups(range(3)))
    assert three == fresh
    assert three[0::3] == single
    assert [len(s) for s in role.seeds + supporter.seeds] == [6] * (2 * ROUNDS)
    again, role, supporter = _run(_setups(range(3)), store)
    assert again == fresh and role.seeds == supporter.seeds == []


# ---------------------------------------------------------------- rows


def test_trial_sd_is_the_mean_over_cards_of_the_sample_sd_of_their_averages():
    """trial_sd: per card the standard deviation (ddof=1) of its dialogues' averages, then the mean over cards;
    a card with fewer than two valid averages is left out, and no such card at all gives NaN."""
    items = [
        CardValue(v, card)
        for card, values in (("en:1", [50, 60, 70]), ("en:2", [20, 20, 80]), ("zh:1", [40, math.nan, 90]))
        for v in values
    ]
    by_hand = (math.sqrt(100) + math.sqrt(1200) + math.sqrt(1250)) / 3
    assert trial_sd(items) == pytest.approx(by_hand)
    assert trial_sd(items) == pytest.approx(
        statistics.fmean([statistics.stdev([50, 60, 70]), statistics.stdev([20, 20, 80]), statistics.stdev([40, 90])])
    )
    assert math.isnan(trial_sd([CardValue(50, "en:1"), CardValue(60, "en:2")]))
    with pytest.raises(TypeError, match="CardValue"):
        trial_sd([50.0, 60.0])  # type: ignore[list-item]


def test_card_values_survive_pickling():
    """Items cross data-parallel ranks and lm-eval's bootstrap workers by pickle, keeping their card."""
    value, scores = CardValue(75.0, "en:3"), DialogueScores([75, math.nan, 25, 0, 100, 50, 50], "zh:4")
    assert pickle.loads(pickle.dumps(value)).card == "en:3" and float(pickle.loads(pickle.dumps(value))) == 75.0
    copy = pickle.loads(pickle.dumps(scores))
    assert copy.card == "zh:4" and copy.scores[0] == 75 and float(copy) == float(scores)


def test_the_stderr_resamples_cards_not_dialogues():
    """With three identical trials per card, resampling cards gives exactly the stderr of one dialogue per card
    (the same draws over the same card values), for the dimension rows (nanmean) and the average; resampling
    dialogues would treat the copies as independent and report a smaller one."""
    import lm_eval.evaluator_utils as evaluator_utils

    import esc_guard_tasks.harness.lm_eval_task  # noqa: F401 - installs the stderr

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(30, 7)) * 25.0
    one = [DialogueScores(row) for row in scores]
    three = [DialogueScores(row, f"en:{i}") for i, row in enumerate(scores) for _ in range(3)]
    average = evaluator_utils.stderr_for_metric(mean_of_dimensions, 500)
    assert average is not None
    assert average(three) == pytest.approx(bootstrap_stderr(mean_of_dimensions, one, 500))
    assert average(three) > 1.3 * bootstrap_stderr(mean_of_dimensions, three, 500)
    row = evaluator_utils.stderr_for_metric(nanmean, 500)
    assert row is not None
    first = [CardValue(s[0], f"en:{i}") for i, s in enumerate(scores) for _ in range(3)]
    assert row(first) == pytest.approx(bootstrap_stderr(nanmean, list(scores[:, 0]), 500))


def test_the_report_reads_each_trial_as_its_own_dialogue(tmp_path):
    """esc-guard report takes a multi-trial run's samples (the same card three times) as three dialogues, never as
    a repeated sample; trial 0 keeps the single-trial identity, so it still pairs with single-trial runs."""
    from report_fixtures import esc_sample

    from esc_guard_tasks.report.runs import read_samples

    lines = []
    for trial in range(3):
        line = esc_sample(7, "en", {"empathy": trial})
        line["doc"]["trial"] = trial
        lines.append(json.dumps(line))
    path = tmp_path / "samples_esc_eval_en_2026-12-07T03-00-00.000000.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    _, samples = read_samples(path)
    assert [s.key for s in samples] == [("esc_eval", 7, "en"), ("esc_eval", 7, "en", 1), ("esc_eval", 7, "en", 2)]
    assert [s.score("empathy") for s in samples] == [0, 1, 2]


# ---------------------------------------------------------------- the real CLI


def served_scores(body: dict[str, Any]) -> str:
    """The judge server: a digit that is a function of the request (so trials with other turns score apart)."""
    key = body["model"] + "\n" + body["messages"][-1]["content"]
    return str(int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 5)


@pytest.fixture()
def speaker_seeds(monkeypatch) -> list[tuple[int, list[int]]]:
    """Every speaker call of the run: (batch size, the engine's seeds), role-player and supporter alike."""
    from esc_guard_tasks.harness.lm_eval_chat import LMEvalChatModel

    calls: list[tuple[int, list[int]]] = []
    original = LMEvalChatModel.generate

    def spy(self, conversations, seeds):
        calls.append((len(conversations), list(seeds)))
        return original(self, conversations, seeds)

    monkeypatch.setattr(LMEvalChatModel, "generate", spy)
    return calls


def _judged_run(tiny_model, card_dir, tmp_path, monkeypatch, out: str, **metadata: Any):
    import lm_eval

    monkeypatch.setattr(
        lm_eval, "simple_evaluate", functools.partial(lm_eval.simple_evaluate, bootstrap_iters=BOOTSTRAP_ITERS)
    )
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / out / "cache"))
    monkeypatch.setattr(registry, "_BUILT", {})
    with LoopbackChatServer(served_scores) as server:
        args = tiny_args(
            tiny_model,
            data_dir=str(card_dir),
            rounds=1,
            judge="esc_rank",
            judge_backend="openai",
            judge_args=f"base_url={server.base_url}",
            **metadata,
        )
        return run_cli([*args, "--apply_chat_template", "--log_samples"], tmp_path / out)


def test_three_trials_through_lm_eval(tiny_model, card_dir, tmp_path, monkeypatch, speaker_seeds):
    """lm_eval with trials=3 and --limit 6: two cards × three trials per task, all twelve dialogues (both
    languages) in each speaker call with twelve distinct seeds; each sample carries its trial and is judged;
    the rows are means over all dialogues and trial_sd equals the hand computation from the samples."""
    run = _judged_run(tiny_model, card_dir, tmp_path, monkeypatch, "three", trials=3, limit=6)
    assert [size for size, _ in speaker_seeds] == [12, 12]
    assert all(len(set(seeds)) == 12 for _, seeds in speaker_seeds)
    for task in ("esc_eval_en", "esc_eval_zh"):
        samples, rows = run.samples[task], run.results["results"][task]
        assert [s["doc"]["trial"] for s in samples] == [0, 1, 2] * 2
        assert len({s["doc"]["card_id"] for s in samples}) == 2
        assert all(len(json.loads(s["filtered_resps"][0])["verdicts"]) == 7 for s in samples)
        assert rows["empathy,none"] == pytest.approx(np.mean([s["empathy"] for s in samples]))
        cards = [
            [s["average"] for s in samples if s["doc"]["card_id"] == c] for c in {s["doc"]["card_id"] for s in samples}
        ]
        assert rows["trial_sd,none"] == pytest.approx(statistics.fmean(statistics.stdev(c) for c in cards))
    assert "trial_sd,none" in run.results["results"]["esc_eval"]


def test_one_trial_equals_a_run_without_the_setting(tiny_model, card_dir, tmp_path, monkeypatch):
    """trials=1 gives exactly the results and samples of a run that does not name the setting, without a
    trial_sd row."""
    plain = _judged_run(tiny_model, card_dir, tmp_path, monkeypatch, "plain")
    one = _judged_run(tiny_model, card_dir, tmp_path, monkeypatch, "one", trials=1)
    assert one.results["results"] == plain.results["results"]
    assert not any("trial_sd" in key for rows in one.results["results"].values() for key in rows)
    for task, samples in plain.samples.items():
        keep = ("doc_id", "doc", "resps", "filtered_resps", "doc_hash", "empathy", "average")
        assert [{k: s[k] for k in keep} for s in one.samples[task]] == [{k: s[k] for k in keep} for s in samples]


def test_cached_requests_of_another_trials_setting_are_refused(tiny_model, card_dir, tmp_path, monkeypatch):
    """lm-eval's --cache_requests key ignores --metadata: requests cached by a trials=1 run are refused by a
    trials=2 run (with the fix), never played as if they were its own."""
    import lm_eval.caching.cache as request_cache

    monkeypatch.setattr(request_cache, "PATH", str(tmp_path / "requests"))
    cached = ["--cache_requests", "true", "--apply_chat_template"]
    run_cli([*tiny_args(tiny_model, tasks="esc_eval_en", data_dir=str(card_dir), rounds=1), *cached], tmp_path / "a")
    with pytest.raises(ValueError, match="esc_eval_en: the requests lm-eval's --cache_requests gave.*refresh"):
        run_cli(
            [*tiny_args(tiny_model, tasks="esc_eval_en", data_dir=str(card_dir), rounds=1, trials=2), *cached],
            tmp_path / "b",
        )
