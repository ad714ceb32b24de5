"""esc_eval inside lm-eval: discovery, dialogue batching, and the harness flags users rely on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness_runs import run_cli, tiny_args

from esc_guard_tasks.esc_eval.protocol import greeting, role_player_system_prompt

ROLE_PLAY_MARKERS = ("I hope you can role-play", "我希望你扮演")


@pytest.fixture()
def generate_calls(monkeypatch) -> Iterator[list[dict]]:
    """Records every HFLM.generate_until call: who was asked (role-player/supporter) and with what."""
    from lm_eval.models.huggingface import HFLM

    calls: list[dict] = []
    original = HFLM.generate_until

    def spy(self, requests, disable_tqdm=False):
        contexts = [r.args[0] for r in requests]
        speaker = "role" if any(m in contexts[0] for m in ROLE_PLAY_MARKERS) else "supporter"
        calls.append(
            {
                "speaker": speaker,
                "contexts": contexts,
                "gen_kwargs": [r.args[1] for r in requests],
                "batch_size": self.batch_size,
            }
        )
        return original(self, requests, disable_tqdm=disable_tqdm)

    monkeypatch.setattr(HFLM, "generate_until", spy)
    yield calls


def test_task_names_are_discovered_without_flags():
    """A plain TaskManager (what `lm_eval --tasks` builds) knows esc_eval (a group) and both languages."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    assert {"esc_eval", "esc_eval_en", "esc_eval_zh"} <= set(manager.all_tasks)
    assert "esc_eval" in manager.all_groups
    assert {"esc_eval_en", "esc_eval_zh"} <= set(manager.all_subtasks)


def test_full_run_batches_rounds_and_logs_transcripts(tiny_model, card_dir, tmp_path, generate_calls):
    """Both languages advance together: 2 batched calls per round, each holding all 4 dialogues;
    every logged sample carries card id, language and the full transcript with speaker roles."""
    run = run_cli([*tiny_args(tiny_model, data_dir=str(card_dir)), "--apply_chat_template", "--log_samples"], tmp_path)

    assert [c["speaker"] for c in generate_calls] == ["role", "supporter"] * 2
    assert all(len(c["contexts"]) == 4 for c in generate_calls)
    from esc_guard_tasks.harness.lm_eval_chat import _ROLE_PLAYERS

    assert not _ROLE_PLAYERS, "the role-player must be released before judging"
    assert set(run.results["results"]) == {"esc_eval", "esc_eval_en", "esc_eval_zh"}
    assert run.results["results"]["esc_eval_en"]["empty_turn_rate,none"] == 0.0
    for task, language, ids in (("esc_eval_en", "en", [32025, 32027]), ("esc_eval_zh", "zh", [10000, 10021])):
        samples = run.samples[task]
        assert [s["doc"]["card_id"] for s in samples] == ids
        for sample, transcript in zip(samples, run.transcripts(task), strict=True):
            assert sample["doc"]["language"] == transcript["language"] == language
            assert transcript["card_id"] == sample["doc"]["card_id"]
            assert transcript["greeting"] == greeting(language)
            assert [t["speaker"] for t in transcript["turns"]] == ["seeker", "supporter"] * 2
            assert all(t["text"] for t in transcript["turns"])
    meta = run.results["configs"]["esc_eval_en"]["metadata"]["esc_eval"]
    assert meta["role_player"]["backend"] == "hf" and meta["role_player"]["model"] == str(tiny_model)
    assert meta["judge"]["judge"] == "none" and meta["rounds"] == 2


def test_chat_templates_and_system_instruction(tiny_model, card_dir, tmp_path, generate_calls):
    """With --apply_chat_template each model's own template renders its own view; --system_instruction
    replaces only the supporter's system prompt; --gen_kwargs reach only the supporter."""
    run_cli(
        [
            *tiny_args(tiny_model, data_dir=str(card_dir), limit=1),
            "--apply_chat_template",
            "--system_instruction",
            "Be a kind listener.",
            "--gen_kwargs",
            "max_gen_toks=5",
        ],
        tmp_path,
    )
    role_round2 = next(c for c in generate_calls[2:] if c["speaker"] == "role")
    supporter_round2 = generate_calls[3]
    en_role = next(ctx for ctx in role_round2["contexts"] if ROLE_PLAY_MARKERS[0] in ctx)
    assert en_role.startswith("<|im_start|>system\n" + role_player_system_prompt("", "en")[:40])
    assert f"<|im_start|>user\n{greeting('en')}<|im_end|>" in en_role
    assert en_role.endswith("<|im_start|>assistant\n")
    for context in supporter_round2["contexts"]:
        assert context.startswith("<|im_start|>system\nBe a kind listener.<|im_end|>\n<|im_start|>user\n")
        assert "You are a helpful assistant!" not in context and greeting("en") not in context
        assert context.count("<|im_start|>assistant\n") == 2  # one earlier reply + the generation prompt
    assert all(kw["max_gen_toks"] == 5 for kw in supporter_round2["gen_kwargs"])
    assert all(kw["max_gen_toks"] == 6 and kw["do_sample"] for kw in role_round2["gen_kwargs"])


def test_plain_transcript_fallback_without_chat_template(tiny_model, card_dir, tmp_path, generate_calls):
    """Without --apply_chat_template the supporter (a base model) gets a plain User/Assistant script
    that stops at the next 'User:' turn; the role-player still uses its chat template."""
    run_cli(tiny_args(tiny_model, data_dir=str(card_dir), limit=1), tmp_path)
    supporter = generate_calls[3]
    for context, kwargs in zip(supporter["contexts"], supporter["gen_kwargs"], strict=True):
        assert context.startswith("You are a helpful assistant!\n\nUser: ")
        assert context.endswith("\nAssistant:") and "<|im_start|>" not in context
        assert "\nUser:" in kwargs["until"]
    assert all(ctx.startswith("<|im_start|>system\n") for ctx in generate_calls[2]["contexts"])


def test_limit_samples_and_batch_size(tiny_model, card_dir, tmp_path, generate_calls):
    """--samples picks exact cards per task; a fixed --batch_size is shared by the hf role-player."""
    run = run_cli(
        [
            *tiny_args(tiny_model, data_dir=str(card_dir), limit=None, rounds=1),
            "--apply_chat_template",
            "--samples",
            json.dumps({"esc_eval_en": [1], "esc_eval_zh": [0, 2]}),
            "--log_samples",
            "--batch_size",
            "3",
        ],
        tmp_path,
    )
    assert [s["doc"]["card_id"] for s in run.samples["esc_eval_en"]] == [32027]
    assert [s["doc"]["card_id"] for s in run.samples["esc_eval_zh"]] == [10000, 10022]
    assert [len(c["contexts"]) for c in generate_calls] == [3, 3]
    assert {c["batch_size"] for c in generate_calls} == {3}


def test_predict_only_keeps_dialogues_without_metrics(tiny_model, card_dir, tmp_path):
    """--predict_only writes the transcripts and computes no metric."""
    run = run_cli(
        [*tiny_args(tiny_model, data_dir=str(card_dir), limit=1, rounds=1), "--apply_chat_template", "--predict_only"],
        tmp_path,
    )
    assert "empty_turn_rate,none" not in run.results["results"]["esc_eval_en"]
    assert len(run.transcripts("esc_eval_zh")[0]["turns"]) == 2


def test_seeded_role_player_is_reproducible(tiny_model, card_dir, tmp_path):
    """The same seed gives identical sampled dialogues; another seed gives different ones."""

    def transcripts(seed: int, sub: str) -> list:
        args = [
            *tiny_args(tiny_model, data_dir=str(card_dir), limit=2, rounds=2, seed=seed),
            "--apply_chat_template",
            "--log_samples",
        ]
        return run_cli(args, tmp_path / sub).transcripts("esc_eval_en")

    first, again, other = transcripts(7, "a"), transcripts(7, "b"), transcripts(8, "c")
    assert first == again
    assert first != other


def test_caches_never_serve_stale_settings(tiny_model, card_dir, tmp_path):
    """--use_cache and --cache_requests work, and a changed --metadata (rounds) takes effect on rerun."""
    cache = [
        "--use_cache",
        str(tmp_path / "lmcache"),
        "--cache_requests",
        "true",
        "--apply_chat_template",
        "--log_samples",
    ]
    first = run_cli([*tiny_args(tiny_model, data_dir=str(card_dir), limit=1, rounds=1), *cache], tmp_path / "a")
    second = run_cli([*tiny_args(tiny_model, data_dir=str(card_dir), limit=1, rounds=2), *cache], tmp_path / "b")
    assert len(first.transcripts("esc_eval_en")[0]["turns"]) == 2
    assert len(second.transcripts("esc_eval_en")[0]["turns"]) == 4
    assert second.results["configs"]["esc_eval_en"]["metadata"]["esc_eval"]["rounds"] == 2


def test_settings_from_environment(tiny_model, card_dir, tmp_path, monkeypatch):
    """ESC_EVAL_<KEY> variables configure the task when --metadata does not."""
    monkeypatch.setenv("ESC_EVAL_DATA_DIR", str(card_dir))
    monkeypatch.setenv("ESC_EVAL_ROUNDS", "1")
    run = run_cli(
        [*tiny_args(tiny_model, tasks="esc_eval_zh", limit=1, rounds=None), "--apply_chat_template", "--log_samples"],
        tmp_path,
    )
    assert len(run.transcripts("esc_eval_zh")[0]["turns"]) == 2


def test_bad_card_file_fails_the_run_naming_file_and_record(tiny_model, tmp_path: Path):
    """A corrupt card file stops the run with an error naming the file and the record."""
    from esc_guard_tasks.esc_eval.cards import CardError

    (tmp_path / "card_high_en.json").write_text(json.dumps([{"base": "x", "language": "english"}]), "utf-8")
    with pytest.raises(CardError, match="card_high_en.json: record 0: missing required field 'id'"):
        run_cli(tiny_args(tiny_model, tasks="esc_eval_en", data_dir=str(tmp_path)), tmp_path / "out")
