"""ESC-Eval fails early and clearly: bad settings, a damaged dialogue store or judge cache and out-of-range card
ids stop the run before any model loads or any request is sent, naming the key (or file and record) and the fix.

Through the real ``lm_eval`` CLI (in process): a spy on lm-eval's ``HFLM.__init__`` shows that the supporter
never loaded, and a loopback OpenAI-compatible server (supporter, role-player and judge on it) shows that no
request was sent. lm-eval 0.4.13 loads the model before it builds the tasks; the checks run where the CLI
resolves the task names (the autoload hook), and again when the task is built (the Python API).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness_runs import run_cli, tiny_args
from loopback_server import LoopbackChatServer

from esc_guard_tasks.dialogue.store import check_store
from esc_guard_tasks.esc_eval.cards import ID_MAX, ID_MIN, CardError, parse_cards
from esc_guard_tasks.esc_eval.settings import ESCSettings, unknown_key_warnings
from esc_guard_tasks.judges.cache import check_cache
from esc_guard_tasks.sqlite_files import SQLiteFileError

DEMO_EN = "esc_eval_demo_en"


@pytest.fixture()
def supporter_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every construction of lm-eval's hf model (the supporter or an hf role-player), by pretrained."""
    from lm_eval.models.huggingface import HFLM

    loads: list[str] = []
    original = HFLM.__init__

    def spy(self, *args, **kwargs):
        loads.append(str(kwargs.get("pretrained")))
        original(self, *args, **kwargs)

    monkeypatch.setattr(HFLM, "__init__", spy)
    yield loads


def hf_run(tiny_model: Path, tmp_path: Path, **metadata) -> None:
    run_cli(tiny_args(tiny_model, tasks=DEMO_EN, limit=1, **metadata), tmp_path / "out")


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"role_model": "nonexistent"}, "'role_model': must be a registered lm-eval model: "),
        ({"role_gen_kwargs": "max_gen_toks=abc"}, "role_gen_kwargs max_gen_toks: must be an integer >= 1 (got 'abc')"),
        ({"judge": "esc_rank", "judge_args": "batch_size=0"}, "judge_args batch_size: must be at least 1 (got 0)"),
    ],
)
def test_bad_settings_fail_through_the_cli_before_the_supporter_loads(
    tiny_model, tmp_path, supporter_loads, metadata, message
):
    """Each bad setting fails in the lm_eval CLI before the model under test is constructed, naming the key
    (and for role_model the registered lm-eval models); before, they failed after the supporter and dialogues."""
    with pytest.raises(ValueError) as error:
        hf_run(tiny_model, tmp_path, **metadata)
    assert message in str(error.value)
    assert supporter_loads == []
    if "role_model" in metadata:
        assert all(name in str(error.value) for name in ("hf", "vllm", "local-chat-completions"))


@pytest.mark.parametrize("bad", ["setting", "store"])
def test_bad_input_through_the_python_api_fails_before_any_request(tmp_path, bad):
    """simple_evaluate (no CLI, so no early hook) builds the model first, then the task: the task's own checks
    (settings when built, the dialogue store before its requests) fail before any request reaches the server
    (the supporter, the role-player and the judge all point at it)."""
    import lm_eval

    with LoopbackChatServer(lambda body: "Hello.") as server:
        metadata = {
            "role_model": "local-chat-completions",
            "role_model_args": f"model=role,base_url={server.chat_url},tokenizer_backend=none",
            "rounds": 1,
            "judge": "llm_rubric",
            "judge_backend": "openai",
            "judge_args": f"base_url={server.base_url},model=judge,max_tokens={0 if bad == 'setting' else 4}",
            "dialogue_store": str(damaged("garbage", tmp_path / "store.sqlite")) if bad == "store" else "none",
        }
        expected = "judge_args max_tokens: must be at least 1" if bad == "setting" else "the dialogue store"
        with pytest.raises(ValueError, match=expected):
            lm_eval.simple_evaluate(
                model="local-chat-completions",
                model_args=f"model=supporter,base_url={server.chat_url},tokenizer_backend=none",
                tasks=[DEMO_EN],
                limit=1,
                apply_chat_template=True,
                metadata=metadata,
            )
        assert server.requests == []


def test_predict_only_ignores_a_damaged_judge_cache(tiny_model, tmp_path):
    """--predict_only loads no judge, so a damaged judge cache does not stop it (only the store is checked)."""
    cache = tmp_path / "esc_guard_cache"
    cache.mkdir(exist_ok=True)
    damaged("garbage", cache / "judge_cache.sqlite")
    judge = {"judge": "llm_rubric", "judge_backend": "openai", "judge_args": "base_url=http://127.0.0.1:9/v1,model=j"}
    args = tiny_args(tiny_model, tasks=DEMO_EN, limit=1, rounds=1, **judge)
    run = run_cli([*args, "--predict_only", "--log_samples"], tmp_path / "out")
    assert len(run.samples[DEMO_EN]) == 1


@pytest.mark.parametrize(
    ("metadata", "environ", "message"),
    [
        ({"rounds": 2.5}, {}, "'rounds': must be an integer"),
        ({"role_gen_kwargs": "max_gen_toks"}, {}, "'role_gen_kwargs': must be k=v,k=v: max_gen_toks has no value"),
        (
            {"role_gen_kwargs": [{"max_gen_toks": 8}]},
            {},
            "'role_gen_kwargs': must be a JSON object or k=v,k=v, not a JSON",
        ),
        ({"rounds": True}, {}, "'rounds': must be an integer"),
        ({}, {"ESC_EVAL_SEED": "1.5"}, "ESC_EVAL_SEED: must be an integer"),
        ({"role_gen_kwargs": {"top_p": 1.5}}, {}, "top_p: must be a number > 0 and <= 1"),
        ({"role_gen_kwargs": {"do_sample": "yes"}}, {}, "do_sample: must be true or false"),
        ({"role_gen_kwargs": {"until": [1]}}, {}, "until: must be a string or a list of strings"),
        ({"role_model_args": ["pretrained=x"]}, {}, "'role_model_args': must be a JSON object or k=v,k=v"),
        ({"data_dir": "/nonexistent/cards"}, {}, "'data_dir': must be an existing folder"),
        ({"judge_backend": "tgi"}, {}, "'judge_backend': must be one of hf, vllm, openai"),
        ({"judge_args": "score_mode=probs"}, {}, "judge_args score_mode: must be one of generate, logits"),
        ({"judge_args": "dtype=fp8"}, {}, "judge_args dtype: must be one of auto, float16, bfloat16, float32"),
        ({"judge_backend": "vllm", "judge_args": "gpu_memory_utilization=2"}, {}, "must be a number > 0 and <= 1"),
        ({"judge_backend": "openai", "judge_args": "base_url=http://x/v1,num_concurrent=0"}, {}, "num_concurrent"),
        ({"judge": "llm_rubric"}, {}, "'judge': judge=llm_rubric with judge_backend=hf needs judge_args pretrained"),
    ],
)
def test_every_setting_is_checked_when_read(metadata, environ, message):
    """Types, ranges, backend names and judge argument values are checked when the settings are read, naming
    where the key came from and what it accepts."""
    with pytest.raises(ValueError, match="ESC-Eval setting from") as error:
        ESCSettings.from_sources(metadata, environ)
    assert message in str(error.value)


def test_good_settings_keep_their_meaning():
    """Strings from the environment become numbers, null still removes a decoding default, a JSON object for
    judge_args or role_model_args is accepted as k=v, and the judge arguments keep their values."""
    s = ESCSettings.from_sources(
        {"role_gen_kwargs": {"top_k": None, "max_gen_toks": 64}, "judge_args": {"batch_size": 4, "dtype": "float16"}},
        {"ESC_EVAL_ROUNDS": "3", "ESC_EVAL_SEED": "-7"},
    )
    assert (s.rounds, s.seed, s.judge_args) == (3, -7, "batch_size=4,dtype=float16")
    assert "top_k" not in s.role_gen_kwargs and s.role_gen_kwargs["max_gen_toks"] == 64


# -- near-miss keys (issue 14) ---------------------------------------------------------------------


def test_near_miss_keys_are_named_but_model_args_are_not():
    """An unknown --metadata key or ESC_EVAL_* variable close to a settings key gets a warning naming that key;
    keys that came from --model_args, far-off keys and the judge API key variable get none."""
    warnings = unknown_key_warnings(
        {"round": 3, "judge_arg": "x", "role_modle": "hf", "pretrained": "m", "seeds": 1, "temperature": 0.1},
        {"ESC_EVAL_JUDGE_ARG": "x", "ESC_EVAL_JUDGE_API_KEY": "k", "ESC_EVAL_ROUNDS": "2"},
        ignore={"pretrained", "seeds"},
    )
    assert warnings == [
        "ESC-Eval: --metadata key 'round' is not a setting and is ignored; did you mean rounds?",
        "ESC-Eval: --metadata key 'judge_arg' is not a setting and is ignored; did you mean judge_args?",
        "ESC-Eval: --metadata key 'role_modle' is not a setting and is ignored; did you mean role_model?",
        "ESC-Eval: environment variable ESC_EVAL_JUDGE_ARG is not a setting and is ignored;"
        " did you mean ESC_EVAL_JUDGE_ARGS?",
    ]


def test_near_miss_keys_warn_through_the_cli(tiny_model, tmp_path, supporter_loads, monkeypatch):
    """In the lm_eval CLI the warnings come before anything loads; a near-miss key given in --model_args (lm-eval
    merges those into the metadata) is the supporter's and is not warned about."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("lm_eval.esc_guard_tasks")
    logger.addHandler(handler)
    monkeypatch.setenv("ESC_EVAL_ROUND", "2")
    args = tiny_args(tiny_model, tasks=DEMO_EN, limit=1, role_model="nonexistent", judge_arg="x")
    args[args.index("--model_args") + 1] += ",seeds=1"
    try:
        with pytest.raises(ValueError, match="registered lm-eval model"):
            run_cli(args, tmp_path / "out")
    finally:
        logger.removeHandler(handler)
    near = [r for r in records if "did you mean" in r]
    assert near == [
        "ESC-Eval: --metadata key 'judge_arg' is not a setting and is ignored; did you mean judge_args?",
        "ESC-Eval: environment variable ESC_EVAL_ROUND is not a setting and is ignored; did you mean ESC_EVAL_ROUNDS?",
    ]
    assert supporter_loads == []


# -- dialogue store and judge cache ----------------------------------------------------------------


def damaged(kind: str, path: Path) -> Path:
    """A store-like file damaged as ``kind``: random bytes, a real database cut in half, or a folder."""
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE turns (dialogue TEXT, turn INTEGER, speaker TEXT, text TEXT)")
            db.executemany("INSERT INTO turns VALUES (?, 0, 'seeker', ?)", [(str(i), "x" * 400) for i in range(300)])
        db.close()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["garbage", "truncated", "folder"])
def test_damaged_store_and_cache_are_named_with_setting_and_fix(tmp_path, monkeypatch, kind):
    """Random bytes, a truncated database or a folder in place of the dialogue store or the judge cache is an
    error naming the file, the setting that points at it and the fix (never a bare sqlite3.DatabaseError)."""
    store = damaged(kind, tmp_path / "store.sqlite")
    with pytest.raises(SQLiteFileError) as error:
        check_store(str(store))
    text = str(error.value)
    assert text.startswith(f"{store}: the dialogue store (setting dialogue_store")
    assert "Move the file away" in text and "dialogue_store=none" in text
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    cache = damaged(kind, tmp_path / "cache" / "judge_cache.sqlite")
    with pytest.raises(SQLiteFileError) as error:
        check_cache()
    text = str(error.value)
    assert text.startswith(f"{cache}: the judge cache (") and "ESC_GUARD_CACHE" in text
    assert "Move the file away" in text


def test_another_programs_database_is_refused(tmp_path):
    """A valid SQLite file with a table of the same name but other columns is not taken for a dialogue store."""
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE turns (id INTEGER, body TEXT)")
    db.close()
    with pytest.raises(SQLiteFileError, match=r"has a table 'turns' with columns \['id', 'body'\]"):
        check_store(str(path))


@pytest.mark.parametrize("which", ["dialogue store", "judge cache"])
def test_damaged_files_fail_through_the_cli_before_the_supporter_loads(tiny_model, tmp_path, supporter_loads, which):
    """A damaged dialogue store or judge cache fails the lm_eval CLI before the supporter is constructed; the judge
    cache used to fail only after every dialogue had been generated."""
    cache = tmp_path / "esc_guard_cache"
    cache.mkdir(exist_ok=True)
    if which == "dialogue store":
        bad = damaged("garbage", tmp_path / "dialogues.sqlite")
        metadata = {"dialogue_store": str(bad)}
    else:
        bad = damaged("truncated", cache / "judge_cache.sqlite")
        judge_args = "base_url=http://127.0.0.1:9/v1,model=judge"
        metadata = {"judge": "llm_rubric", "judge_backend": "openai", "judge_args": judge_args}
    with pytest.raises(SQLiteFileError, match=f"the {which}") as error:
        hf_run(tiny_model, tmp_path, **metadata)
    assert str(error.value).startswith(str(bad))
    assert supporter_loads == []


# -- card ids --------------------------------------------------------------------------------------


def cards_json(card_id: int) -> str:
    """A card file whose second record (index 1) has ``card_id``."""
    records = [{"id": 1, "base": "Age: 30", "language": "english"}, {"id": card_id, "base": "Age: 40"}]
    records[1]["language"] = "english"
    return json.dumps(records)


@pytest.mark.parametrize("card_id", [ID_MAX + 1, ID_MIN - 1, 2**70])
def test_card_ids_outside_int64_are_card_errors(card_id):
    """The dataset layer stores card ids as int64: larger or smaller ids are a CardError naming file and record."""
    with pytest.raises(CardError, match=rf"cards.json: record 1 \(id {card_id}\): 'id' must fit a signed 64-bit"):
        parse_cards(cards_json(card_id), "cards.json", "en")


def test_int64_bounds_reach_the_dataset():
    """The largest and smallest int64 ids pass validation and the datasets table."""
    from esc_guard_tasks.esc_eval.cards import load_card_dataset

    for card_id in (ID_MAX, ID_MIN):
        assert parse_cards(cards_json(card_id), "cards.json", "en")[1].id == card_id
    rows = load_card_dataset(language="en", card_set="demo")["test"]
    assert rows.features["card_id"].dtype == "int64"


def test_huge_card_id_fails_through_the_cli_before_any_request(tmp_path):
    """A card id of 2**63 in a data_dir stops the lm_eval CLI with a CardError naming the file and record (it
    crashed in pyarrow with an OverflowError before); no request reached the server."""
    (tmp_path / "card_high_en.json").write_text(cards_json(2**63), "utf-8")
    with LoopbackChatServer(lambda body: "Hello.") as server:
        meta = {
            "role_model": "local-chat-completions",
            "role_model_args": f"model=role,base_url={server.chat_url},tokenizer_backend=none",
            "data_dir": str(tmp_path),
            "rounds": 1,
            "judge": "none",
        }
        args = [
            *("--model", "local-chat-completions"),
            *("--model_args", f"model=supporter,base_url={server.chat_url},tokenizer_backend=none"),
            *("--tasks", "esc_eval_en", "--limit", "1", "--apply_chat_template"),
            *("--metadata", json.dumps(meta)),
        ]
        with pytest.raises(CardError) as error:
            run_cli(args, tmp_path / "out")
        assert server.requests == []
    assert f"{tmp_path / 'card_high_en.json'}: record 1 (id {2**63}): 'id' must fit a signed 64-bit" in str(error.value)


def test_bad_card_fails_through_the_cli_before_the_supporter_loads(tiny_model, tmp_path, supporter_loads):
    """The lm_eval CLI reads the requested tasks' cards before the model under test loads: a bad card file stops
    the run naming the file and record with no model constructed (before, only after the supporter had loaded)."""
    (tmp_path / "card_high_en.json").write_text(cards_json(-(2**63) - 1), "utf-8")
    with pytest.raises(CardError, match=r"card_high_en.json: record 1 \(id -9223372036854775809\)"):
        run_cli(tiny_args(tiny_model, tasks="esc_eval_en", limit=1, data_dir=str(tmp_path)), tmp_path / "out")
    assert supporter_loads == []
