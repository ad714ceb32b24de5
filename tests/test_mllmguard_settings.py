"""MLLMGuard task settings: task metadata, else environment variable, else default; every name and value
checked when the task is built (before any request), each error naming the key, its source and what is
allowed. The same checks inside a real lmms-eval run: tests/test_lmms_eval.py."""

from __future__ import annotations

import os
import re

import pytest

from esc_guard_tasks.mllmguard.data import HUB_REVISION
from esc_guard_tasks.mllmguard.judges import clear_judges, get_judge
from esc_guard_tasks.mllmguard.settings import KNOWN_KEYS, TaskSettings


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("MLLMGUARD_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path))
    clear_judges()
    yield
    clear_judges()


def test_metadata_wins_over_environment_over_defaults(monkeypatch):
    """Each setting comes from the task's metadata if set, else its environment variable, else the default;
    the token is never written out."""
    monkeypatch.setenv("MLLMGUARD_SPLIT", "zh")
    monkeypatch.setenv("MLLMGUARD_ON_BAD_ROW", "skip")
    settings = TaskSettings.resolve("t", "bias", {"split": "EN", "token": "hf_secret", "judge": "keywords"})
    assert (settings.split, settings.on_bad_row, settings.revision) == ("en", "skip", HUB_REVISION)
    assert settings.judge_settings.judge == "keywords" and settings.public()["token"] == "set"
    assert "hf_secret" not in repr(settings.public())


@pytest.mark.parametrize(
    ("metadata", "env", "message"),
    [
        ({"splt": "en"}, {}, "task t: unknown metadata key(s) splt; known: " + ", ".join(KNOWN_KEYS[:-1])),
        ({"split": "fr"}, {}, "metadata 'split' of t: 'fr' is not one of all, en, zh"),
        ({}, {"MLLMGUARD_IMAGE_CHECK": "full"}, "MLLMGUARD_IMAGE_CHECK: 'full' is not one of verify, decode"),
        ({"revision": 4263487}, {}, "metadata 'revision' of t: revision must be a non-empty text, got 4263487"),
        ({"data_dir": ["a"]}, {}, "metadata 'data_dir' of t: data_dir must be a non-empty text"),
        ({"token": 3}, {}, "metadata 'token' of t: token must be a text or true/false, got 3"),
        ({"judge": "gpt"}, {}, "judge must be one of guardrank, llm, keywords, got 'gpt'"),
        ({"judge": "guardrank", "judge_args": "batch_size=0"}, {}, "batch_size must be an integer >= 1, got 0"),
        ({"judge": "guardrank", "judge_args": "batch_size=abc"}, {}, "batch_size must be an integer >= 1"),
        ({"judge": "guardrank", "judge_args": "device=gpu0"}, {}, "device must be a torch device"),
        ({"judge": "guardrank", "judge_args": "dtype=fp8"}, {}, "GuardRank dtype must be one of"),
        ({"judge": "guardrank", "judge_args": "decoder=x"}, {}, "unknown judge_args for judge=guardrank: decoder"),
        ({"judge": "keywords", "judge_args": "cache=maybe"}, {}, "cache for judge=keywords must be true or false"),
        ({"judge": "keywords", "judge_args": "model=m"}, {}, "judge=keywords takes no judge_args but cache, got model"),
        ({"judge": "llm", "judge_args": "model=m"}, {}, "judge=llm needs judge_args base_url=<server> and model="),
        ({}, {"MLLMGUARD_JUDGE": "llm", "MLLMGUARD_JUDGE_ARGS": "base_url=http://127.0.0.1:9/v1"}, "judge=llm needs"),
    ],
)
def test_bad_settings_name_the_key_and_the_allowed_values(monkeypatch, metadata, env, message):
    """Unknown names, values outside the allowed ones, wrong types, unknown judges and bad judge arguments are
    errors when the task's settings are resolved (which builds the judge without loading it)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        TaskSettings.resolve("t", "privacy", metadata)


def test_valid_guardrank_arguments_load_nothing():
    """Checking GuardRank's arguments (dtype, device, batch_size, cache) loads no model."""
    settings = TaskSettings.resolve(
        "t", "privacy", {"judge": "guardrank", "judge_args": "dtype=bfloat16,device=cpu,batch_size=2,cache=false"}
    )
    judge = get_judge(settings.judge_settings)
    assert judge.decoder._model is None and judge.encoder._model is None
