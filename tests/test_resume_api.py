"""Resume through the real CLI with API speakers: after a dead endpoint, and never across changed settings.

The supporter, the role-player and the judge (``llm_rubric`` through ``judge_backend=openai``)
are lm-eval's chat-completions backends and the openai judge on one loopback server, so the
requests the server receives are exactly what a run generates. A dead endpoint: one run loses
the supporter in round 3 (503 on every attempt), the next one the judge; each fails with the
error naming the endpoint, the model and the attempts. The same command, rerun once the server
is healthy, asks only for what the dialogue store and the judge cache do not hold, and ends
with the results and samples of a run that never saw an outage. Changed settings: after a
complete run, a rerun with any setting that decides the dialogues changed asks for every turn.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness_runs import run_cli
from loopback_server import LoopbackChatServer, LoopbackHTTPError
from test_faulty_servers import JUDGE_MODEL, ROLE_MODEL, SUPPORTER_MODEL, comparable, scripted

from esc_guard_tasks.chat_api import ChatAPIError
from esc_guard_tasks.esc_eval import dialogue as store_module
from esc_guard_tasks.judges import registry

ROUNDS = 4
DIALOGUES = 2  # --limit 1: one card per language
JUDGEMENTS = DIALOGUES * 7


class Outage:
    """The scripted server, except that a model in ``down`` answers 503 once it has answered ``down[model]`` times."""

    def __init__(self) -> None:
        self.down: dict[str, int] = {}
        self.answered: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str:
        with self.lock:
            model = body["model"]
            if model in self.down and self.answered[model] >= self.down[model]:
                raise LoopbackHTTPError(503, "server is down")
            self.answered[model] += 1
        return scripted(body)

    def phase(self, down: dict[str, int]) -> None:
        """Start counting a new run's answers, with these models failing."""
        self.down, self.answered = down, Counter()


def args(
    server: LoopbackChatServer,
    card_dir: Path,
    store: str,
    *,
    supporter: str = SUPPORTER_MODEL,
    metadata: dict[str, Any] | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """One attempt and one retry everywhere (short backoff), the dialogue store at ``store``; ``metadata`` and
    ``extra`` CLI arguments override or add settings."""
    meta = {
        "role_model": "local-chat-completions",
        "role_model_args": f"model={ROLE_MODEL},base_url={server.chat_url},max_retries=1",
        "rounds": ROUNDS,
        "data_dir": str(card_dir),
        "judge": "llm_rubric",
        "judge_backend": "openai",
        "judge_args": f"base_url={server.base_url},model={JUDGE_MODEL},max_retries=1,retry_backoff=0.01",
        "dialogue_store": store,
    } | (metadata or {})
    return [
        *("--model", "local-chat-completions"),
        *("--model_args", f"model={supporter},base_url={server.chat_url},num_concurrent=2,max_retries=1"),
        *("--tasks", "esc_eval", "--limit", "1", "--apply_chat_template", "--log_samples"),
        *("--metadata", json.dumps(meta)),
        *extra,
    ]


def stored_turns(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM turns").fetchone()[0]


@pytest.mark.slow
def test_a_dead_endpoint_keeps_progress_and_the_rerun_generates_only_the_rest(card_dir, tmp_path, monkeypatch):
    """The supporter dies in round 3: ChatAPIError names its endpoint, model and 2 attempts, no results are
    written, and the 10 turns before it are in the store. Rerun with the judge dead: only the missing 6 turns are
    asked for, then the judge's error. Rerun healthy: no speaker request at all, exactly the 14 judgements, and
    results and samples equal an outage-free run's without a store."""
    outage = Outage()
    store = tmp_path / "dialogues.sqlite"
    with LoopbackChatServer(outage, models=[ROLE_MODEL, SUPPORTER_MODEL, JUDGE_MODEL]) as server:

        def run(name: str, store_setting: str):
            cache = "reference_cache" if name == "reference" else "cache"
            monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / cache))
            monkeypatch.setattr(registry, "_BUILT", {})
            return run_cli(args(server, card_dir, store_setting), tmp_path / name)

        reference = run("reference", "none")

        outage.phase({SUPPORTER_MODEL: 2 * DIALOGUES})  # rounds 1 and 2 answered, round 3's supporter turn fails
        with pytest.raises(ChatAPIError) as supporter_down:
            run("supporter_down", str(store))
        assert f"endpoint {server.chat_url} (model '{SUPPORTER_MODEL}') failed after 2 attempts: HTTP 503" in str(
            supporter_down.value
        )
        assert outage.answered == {ROLE_MODEL: 3 * DIALOGUES, SUPPORTER_MODEL: 2 * DIALOGUES}
        assert stored_turns(store) == 5 * DIALOGUES, "rounds 1-2 and round 3's seeker turns are kept"

        outage.phase({JUDGE_MODEL: 0})
        with pytest.raises(ChatAPIError) as judge_down:
            run("judge_down", str(store))
        assert f"judge endpoint {server.chat_url} (model '{JUDGE_MODEL}') failed after 2 attempts: HTTP 503" in str(
            judge_down.value
        )
        assert outage.answered == {ROLE_MODEL: 1 * DIALOGUES, SUPPORTER_MODEL: 2 * DIALOGUES}
        assert stored_turns(store) == 2 * ROUNDS * DIALOGUES

        outage.phase({})
        resumed = run("resumed", str(store))
        assert outage.answered == {JUDGE_MODEL: JUDGEMENTS}, "stored turns are never asked for again"
    assert not list((tmp_path / "supporter_down").glob("**/results_*.json"))
    assert not list((tmp_path / "judge_down").glob("**/results_*.json"))
    assert comparable(resumed) == comparable(reference)


@pytest.mark.slow
def test_a_changed_setting_in_the_cli_regenerates_every_turn(card_dir, tmp_path, monkeypatch):
    """After a complete run into a store, the same command asks for no turn again; with the supporter's model or
    generation kwargs, the role-player's model args or generation kwargs, the seed, or the protocol prompts changed
    (what the harness puts into the dialogue key), every one of the 2 × rounds × 2 turns is asked for again."""
    store = str(tmp_path / "dialogues.sqlite")
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache"))
    with LoopbackChatServer(scripted, models=[ROLE_MODEL, SUPPORTER_MODEL, JUDGE_MODEL]) as server:
        changes: dict[str, dict[str, Any]] = {
            "supporter_model": {"supporter": "another-supporter"},
            "supporter_gen_kwargs": {"extra": ("--gen_kwargs", "max_gen_toks=99")},
            "role_model_args": {"role_model_args": f"model=another-role,base_url={server.chat_url},max_retries=1"},
            "role_gen_kwargs": {"role_gen_kwargs": {"max_gen_toks": 99}},
            "seed": {"seed": 7},
            "protocol_prompts": {},
        }

        def speaker_requests(name: str) -> int:
            """Run the command with the change ``name`` (if any); the role-player and supporter requests it made."""
            change = dict(changes.get(name, {}))
            options = {k: change.pop(k) for k in ("supporter", "extra") if k in change}
            before = len(server.chat_bodies())
            with monkeypatch.context() as patch:
                if name == "protocol_prompts":
                    edited = store_module.prompts() | {"edited": True}
                    patch.setattr(store_module, "prompts", lambda: edited)
                command = args(server, card_dir, store, metadata={"judge": "none", **change}, **options)
                run_cli(command, tmp_path / name)
            return sum(body["model"] != JUDGE_MODEL for body in server.chat_bodies()[before:])

        every_turn = 2 * ROUNDS * DIALOGUES
        assert speaker_requests("first") == every_turn
        assert speaker_requests("same") == 0, "the unchanged command is served from the store"
        for name in changes:
            assert speaker_requests(name) == every_turn, name
