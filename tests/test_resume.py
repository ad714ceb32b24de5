"""Resume, nothing lost: a killed ESC-Eval run restarted with the same command generates only what is missing.

Unit tests drive the engine with deterministic scripted speakers and a real SQLite store,
"killing" it at every round boundary and mid-batch; the end-to-end test runs the real
``lm_eval`` CLI in a subprocess, SIGKILLs it at random points (in the dialogue rounds and
while judging, learned by polling the stores it writes), reruns the same command and
compares with an uninterrupted run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness_runs import read_run, run_cli, tiny_args

from esc_guard_tasks.dialogue.store import SQLiteDialogueStore, open_store
from esc_guard_tasks.esc_eval.dialogue import DialogueSetup
from esc_guard_tasks.esc_eval.dialogue import EscDialogueEngine as DialogueEngine
from esc_guard_tasks.esc_eval.protocol import Card
from esc_guard_tasks.judges.base import JudgeRequest
from esc_guard_tasks.judges.cache import CachedJudge

ROUNDS = 3
IDENTITY = {"role_player": "scripted", "supporter": "scripted"}
BOOTSTRAP_ITERS = 1000  # lm-eval's stderr resamples in the CLI runs (default 100000: most of a tiny run's time)


class SimulatedKillError(Exception):
    """Stands in for SIGKILL: raised where the process would have died."""


class Budget:
    """How many more speaker calls (or store commits) may happen before the 'kill'."""

    def __init__(self, calls: int | None = None):
        self.calls = calls

    def spend(self) -> None:
        if self.calls is not None:
            if self.calls == 0:
                raise SimulatedKillError
            self.calls -= 1


class EchoSpeaker:
    """Deterministic like a greedy model: the reply is a digest of the history and the seed; counts its replies."""

    def __init__(self, name: str, budget: Budget | None = None):
        self.name = name
        self.budget = budget or Budget()
        self.batches: list[int] = []

    def generate(self, conversations, seeds):
        self.budget.spend()
        self.batches.append(len(conversations))
        return [
            f"{self.name} {hashlib.sha1(json.dumps([c, s]).encode()).hexdigest()[:10]}"
            for c, s in zip(conversations, seeds, strict=True)
        ]


class KillingStore(SQLiteDialogueStore):
    """Dies just before committing a batch, once its budget is spent: the batch was generated but never stored."""

    def __init__(self, path: Path, budget: Budget):
        super().__init__(path)
        self.budget = budget

    def save(self, turns):
        self.budget.spend()
        super().save(turns)


def _setups(n: int = 4, base: str = "card", system: str = "SYS") -> list[DialogueSetup]:
    return [DialogueSetup(Card(id=i, language="en" if i % 2 else "zh", base=f"{base} {i}"), system) for i in range(n)]


def _run(store=None, *, setups=None, rounds=ROUNDS, seed=1, identity=IDENTITY, budget=None):
    role, supporter = EchoSpeaker("seeker", budget), EchoSpeaker("supporter", budget)
    engine = DialogueEngine(role, supporter, rounds=rounds, seed=seed, store=store, identity=identity)
    transcripts = engine.run(setups or _setups())
    return transcripts, sum(role.batches) + sum(supporter.batches), role, supporter


@pytest.mark.parametrize("where", ["generating", "persisting"])
@pytest.mark.parametrize("finished_batches", range(2 * ROUNDS + 1))
def test_resume_after_a_kill_at_any_batch_generates_exactly_the_missing_turns(tmp_path, where, finished_batches):
    """Killed after k committed speaker batches (mid-batch, or after generating but before committing), the rerun
    resumes with k batches' turns, generates exactly the other 2·rounds − k batches, and ends with the transcripts
    of an uninterrupted run."""
    reference, reference_turns, _, _ = _run()
    path = tmp_path / "dialogues.sqlite"
    budget = Budget(finished_batches)
    store = KillingStore(path, budget) if where == "persisting" else SQLiteDialogueStore(path)
    try:
        _run(store, budget=None if where == "persisting" else budget)
    except SimulatedKillError:
        assert finished_batches < 2 * ROUNDS
    store.close()

    resumed, generated, role, supporter = _run(SQLiteDialogueStore(path))
    assert [t.to_json() for t in resumed] == [t.to_json() for t in reference]
    assert generated == reference_turns - 4 * finished_batches
    assert len(role.batches) + len(supporter.batches) == 2 * ROUNDS - finished_batches


def test_dialogues_at_different_progress_are_batched_by_what_each_still_needs(tmp_path):
    """With some dialogues stored complete (an earlier, smaller run), each batch holds only the dialogues that still
    need that turn, and the transcripts equal a fresh run's."""
    store = SQLiteDialogueStore(tmp_path / "d.sqlite")
    _run(store, setups=_setups(4)[:2])
    reference, _, _, _ = _run(setups=_setups(4))
    resumed, generated, role, supporter = _run(store, setups=_setups(4))
    assert [t.to_json() for t in resumed] == [t.to_json() for t in reference]
    assert role.batches == supporter.batches == [2] * ROUNDS
    assert generated == 2 * 2 * ROUNDS


@pytest.mark.parametrize(
    "change",
    [
        {"identity": {"role_player": "scripted", "supporter": "another model"}},
        {"identity": {"role_player": {"gen_kwargs": {"temperature": 0.5}}, "supporter": "scripted"}},
        {"seed": 2},
        {"setups": _setups(system="another system prompt")},
        {"setups": _setups(base="another card text")},
    ],
    ids=["model", "gen_kwargs", "seed", "system_prompt", "card_text"],
)
def test_a_changed_setting_never_serves_stored_turns(tmp_path, change):
    """After a complete run, changing the models or their settings, the seed, the supporter's system prompt or the
    card text regenerates every turn: the result equals a run without any store."""
    store = SQLiteDialogueStore(tmp_path / "d.sqlite")
    _run(store)
    changed, generated, _, _ = _run(store, **change)
    fresh, fresh_turns, _, _ = _run(**change)
    assert generated == fresh_turns == 4 * 2 * ROUNDS
    assert [t.to_json() for t in changed] == [t.to_json() for t in fresh]


def test_fewer_or_more_rounds_reuse_the_common_prefix_only(tmp_path):
    """Turn i does not depend on how many rounds follow: a 2-round rerun of a 3-round run generates nothing, a
    4-round rerun only the 4th round, and both equal fresh runs with those rounds."""
    store = SQLiteDialogueStore(tmp_path / "d.sqlite")
    _run(store, rounds=3)
    shorter, generated_shorter, _, _ = _run(store, rounds=2)
    longer, generated_longer, _, _ = _run(store, rounds=4)
    assert generated_shorter == 0 and generated_longer == 4 * 2
    assert [t.to_json() for t in shorter] == [t.to_json() for t in _run(rounds=2)[0]]
    assert [t.to_json() for t in longer] == [t.to_json() for t in _run(rounds=4)[0]]


def test_an_inconsistent_store_is_an_error_naming_the_file(tmp_path):
    """A stored dialogue with a gap or a wrong speaker is refused with the store's path, never half re-used."""
    path = tmp_path / "d.sqlite"
    _run(SQLiteDialogueStore(path))
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM turns WHERE turn = 1")
    with pytest.raises(ValueError, match=f"{path}.*has turn 2"):
        _run(SQLiteDialogueStore(path))


def test_store_setting_none_turns_persistence_off(tmp_path, monkeypatch):
    """dialogue_store=none persists nothing; unset, the store is dialogues.sqlite in the cache folder."""
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path))
    assert open_store("none") is None
    default = open_store(None)
    assert default is not None and default.path == tmp_path / "dialogues.sqlite"


class CountingJudge:
    """A judge backend with a batch size: replies with a digest of the input, records every call, dies on demand."""

    batch_size = 3

    def __init__(self, budget: Budget | None = None):
        self.budget = budget or Budget()
        self.calls: list[list[JudgeRequest]] = []

    def identity(self):
        return {"judge": "counting"}

    def complete(self, requests):
        self.budget.spend()
        self.calls.append(list(requests))
        return [hashlib.sha1(r.messages[-1]["content"].encode()).hexdigest()[:4] for r in requests]


@pytest.mark.parametrize("finished_chunks", [0, 1, 4])
def test_judge_replies_are_committed_per_chunk_and_a_rerun_sends_the_same_remaining_batches(tmp_path, finished_chunks):
    """Killed after k judge batches, the rerun asks the backend only for the other batches — the same batches an
    uninterrupted run sends — and returns the same replies."""
    requests = [
        JudgeRequest.chat([{"role": "user", "content": f"dialogue {i} " * (i % 5 + 1)}], f"adapter{i % 2}")
        for i in range(14)
    ]
    uninterrupted = CountingJudge()
    expected = CachedJudge(uninterrupted, tmp_path / "reference.sqlite").complete(requests)
    assert len(uninterrupted.calls) == 5

    path = tmp_path / "judge.sqlite"
    with pytest.raises(SimulatedKillError):
        CachedJudge(CountingJudge(Budget(finished_chunks)), path).complete(requests)
    rerun = CountingJudge()
    assert CachedJudge(rerun, path).complete(requests) == expected
    assert rerun.calls == uninterrupted.calls[finished_chunks:]


# ---------------------------------------------------------------- the real CLI, SIGKILLed


@pytest.fixture(scope="module")
def tiny_judge_args(tmp_path_factory) -> str:
    from judge_fixtures import build_tiny_judge

    base, adapters = build_tiny_judge(tmp_path_factory.mktemp("judge"))
    return f"pretrained={base},adapters={adapters},device=cpu,max_new_tokens=1,batch_size=2"


def _rows(path: Path, table: str) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


class CLIRuns:
    """One output folder per run; a shared cache folder holds the dialogue store and the judge cache."""

    def __init__(self, root: Path, args: list[str]):
        self.root, self.args, self.count = root, args, 0
        self.cache = root / "cache"
        self.dialogues, self.judgements = self.cache / "dialogues.sqlite", self.cache / "judge_cache.sqlite"

    def start(self) -> tuple[subprocess.Popen, Path, Path]:
        self.count += 1
        self.root.mkdir(parents=True, exist_ok=True)
        out, counts = self.root / f"run{self.count}", self.root / f"counts{self.count}.txt"
        env = os.environ | {
            "ESC_GUARD_CACHE": str(self.cache),
            "ESC_EVAL_DIALOGUE_STORE": str(self.dialogues),
            "ESC_COUNT_FILE": str(counts),
            "ESC_BOOTSTRAP_ITERS": str(BOOTSTRAP_ITERS),
        }
        log = open(self.root / f"log{self.count}.txt", "w")  # noqa: SIM115 (closed by the child's exit)
        driver = Path(__file__).with_name("counting_lm_eval.py")
        command = [sys.executable, str(driver), *self.args, "--output_path", str(out)]
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), out, counts

    def complete(self) -> tuple[Path, dict[str, int]]:
        proc, out, counts = self.start()
        assert proc.wait(timeout=600) == 0, self.log()[-3000:]
        lines = counts.read_text().split() if counts.exists() else []
        return out, {kind: lines.count(kind) for kind in ("turn", "judgement")}

    def log(self) -> str:
        """What the latest run printed."""
        return (self.root / f"log{self.count}.txt").read_text()

    def kill_when(self, store: Path, table: str, rows: int, delay: float) -> None:
        """SIGKILL the run once ``store`` holds ``rows`` rows (plus ``delay`` seconds: often mid-batch)."""
        proc, _, _ = self.start()
        deadline = time.monotonic() + 600
        while _rows(store, table) < rows:
            assert proc.poll() is None, f"run ended before {rows} rows in {store.name}"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _outcome(out: Path) -> tuple[dict, dict]:
    run = read_run(out)
    samples = {t: [(s["doc_id"], s["resps"], s["filtered_resps"]) for s in rows] for t, rows in run.samples.items()}
    return run.results["results"], samples


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_uninterrupted_results(
    tiny_model, tiny_judge_args, card_dir, tmp_path, monkeypatch
):
    """lm_eval --tasks esc_eval (sampled role-player, greedy supporter, ESC-RANK-style judge) SIGKILLed twice at random
    points of the dialogue rounds and once while judging, then rerun with the same command: results and samples equal
    an uninterrupted run's (made without a store), and the last run generates exactly the turns and judgements the
    stores did not hold — none twice, none lost."""
    args = [
        *tiny_args(
            tiny_model, data_dir=str(card_dir), limit=2, rounds=ROUNDS, judge="esc_rank", judge_args=tiny_judge_args
        ),
        "--apply_chat_template",
        "--log_samples",
    ]
    turns, judgements = 4 * 2 * ROUNDS, 4 * 7
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "reference_cache"))
    import lm_eval

    monkeypatch.setattr(
        lm_eval, "simple_evaluate", functools.partial(lm_eval.simple_evaluate, bootstrap_iters=BOOTSTRAP_ITERS)
    )
    run_cli(args, tmp_path / "reference")

    rng = random.Random(20261205)
    runs = CLIRuns(tmp_path / "killed", args)
    runs.kill_when(runs.dialogues, "turns", rng.randint(1, turns // 2), rng.uniform(0, 0.1))
    first = _rows(runs.dialogues, "turns")
    assert 0 < first < turns and first % 4 == 0, "whole speaker batches are committed"
    runs.kill_when(runs.dialogues, "turns", rng.randint(first + 1, turns), rng.uniform(0, 0.1))
    assert _rows(runs.dialogues, "turns") > first
    judged = _rows(runs.judgements, "replies")
    # inside the first task's judging (it commits 7 chunks of 2)
    runs.kill_when(runs.judgements, "replies", rng.randint(judged + 1, max(judged + 1, 10)), rng.uniform(0, 0.02))
    stored_turns, stored_judgements = _rows(runs.dialogues, "turns"), _rows(runs.judgements, "replies")
    assert stored_turns == turns and 0 < stored_judgements < judgements

    out, counts = runs.complete()
    assert counts == {"turn": 0, "judgement": judgements - stored_judgements}
    assert "Loading the role-player" not in runs.log(), "all turns were stored: the role-player is never loaded"
    assert _outcome(out) == _outcome(tmp_path / "reference")
    assert _rows(runs.dialogues, "turns") == turns and _rows(runs.judgements, "replies") == judgements
