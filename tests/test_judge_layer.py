"""The one judge layer both benchmarks share: one Verdict, one argument parser and secret rule, one check of
OpenAI-compatible arguments, one registry that builds each judge once."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from lm_eval.utils import simple_parse_args_string

from esc_guard_tasks.esc_eval import judging
from esc_guard_tasks.esc_eval.rubric import dimensions
from esc_guard_tasks.esc_eval.settings import JUDGE_BACKENDS, JUDGES, ESCSettings
from esc_guard_tasks.judges import registry
from esc_guard_tasks.judges.args import parse_kv, parse_pairs, public_args
from esc_guard_tasks.judges.base import Verdict
from esc_guard_tasks.judges.cache import CachedJudge
from esc_guard_tasks.mllmguard import judges as guard_judges


@pytest.fixture(autouse=True)
def fresh_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "_BUILT", {})


def esc_settings(judge: str, backend: str, args: str) -> ESCSettings:
    return ESCSettings.from_sources({"judge": judge, "judge_backend": backend, "judge_args": args}, {})


def guard_settings(judge: str, args: str) -> guard_judges.JudgeSettings:
    return guard_judges.JudgeSettings.from_sources({"judge": judge, "judge_args": args}, {})


@pytest.mark.parametrize(
    "text",
    [
        "a=1,b=-2,c=1.5,d=1e3",
        "flag=true,other=False,nothing=none",
        "url=http://h:8000/v1,model=m",
        "quoted='123',eq=a=b",
        "revision=1234567,name=x y",
    ],
)
def test_both_benchmarks_type_judge_args_as_lm_eval_does(text):
    """One parser: ``k=v`` values are typed exactly as lm-eval's own ``simple_parse_args_string`` types them, and
    MLLMGuard's judge settings hold what that parser gives (they once had a parser of their own that typed
    ``none``, quotes and keys differently)."""
    assert parse_kv(text) == simple_parse_args_string(text)
    assert guard_judges.JudgeSettings.from_sources({"judge": "keywords", "judge_args": text}, {}).args == parse_kv(text)
    assert parse_kv({"a": "1"}) == {"a": "1"} and parse_kv("") == {} and parse_kv(None) == {}


def test_a_name_without_a_value_is_the_same_error_in_both_benchmarks():
    """``k`` or ``k=`` without a value is refused with one message, whichever benchmark reads it; never passed on
    as an empty string."""
    with pytest.raises(ValueError, match="must be k=v,k=v: cache has no value"):
        guard_settings("keywords", "cache")
    with pytest.raises(ValueError, match="must be k=v,k=v: device has no value"):
        esc_settings("esc_rank", "hf", "device=")
    assert parse_pairs({"a": ""}) == {"a": ""}  # a mapping is taken as given


def test_one_secret_rule_for_results_and_refusals():
    """Credential-looking names (key, token, secret, password, any case) never reach results, and both benchmarks
    refuse one given as a judge argument with where it must come from (the environment)."""
    given = {"api_key": "a", "HF_TOKEN": "b", "client_secret": "c", "Password": "d", "model": "m", "base_url": "u"}
    assert public_args(given) == {"model": "m", "base_url": "u"}
    hint = r"an API key is read only from the environment \(ESC_EVAL_JUDGE_API_KEY or OPENAI_API_KEY\)"
    with pytest.raises(ValueError, match=hint) as esc:
        esc_settings("llm_rubric", "openai", "base_url=http://127.0.0.1:9/v1,model=m,api_key=sk-INLINE")
    with pytest.raises(ValueError, match=hint) as guard:
        guard_judges.get_judge(guard_settings("llm", "base_url=http://127.0.0.1:9/v1,model=m,api_key=sk-INLINE"))
    assert "sk-INLINE" not in str(esc.value) + str(guard.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("base_url=http://127.0.0.1:9/v1,model=m,timeout=0", "judge_args timeout: must be a number > 0 (got 0)"),
        ("base_url=http://127.0.0.1:9/v1,model=m,num_concurrent=0", "judge_args num_concurrent: must be at least 1"),
        ("base_url=http://127.0.0.1:9/v1,model={adapter}", "asks one model for every dimension"),
        ("base_url=http://127.0.0.1:9/v1", "needs judge_args model=<served model name>"),
        ("model=m", "needs judge_args base_url=<server> and model=<served model>"),
        ("base_url=http://127.0.0.1:9/v1,model=m,temperature=0", ": temperature (accepted: base_url, model,"),
    ],
)
def test_one_check_of_openai_compatible_arguments(args, message):
    """ESC-Eval's llm_rubric on the openai backend and MLLMGuard's llm judge refuse the same bad arguments with
    the same reason (value ranges, base_url and one named model needed): one check, not two that drift."""
    with pytest.raises(ValueError, match=re.escape(message)):
        esc_settings("llm_rubric", "openai", args)
    with pytest.raises(ValueError, match=re.escape(message)):
        guard_judges.get_judge(guard_settings("llm", args))


def test_esc_rank_on_a_server_needs_a_model_per_adapter():
    """ESC-RANK on the openai backend asks one served model per adapter: ``model`` defaults to ``{adapter}`` and a
    fixed name is refused."""
    settings = esc_settings("esc_rank", "openai", "base_url=http://127.0.0.1:9/v1")
    assert judging.build_backend(settings).identity()["model"] == "{adapter}"
    with pytest.raises(ValueError, match="must contain {adapter}"):
        esc_settings("esc_rank", "openai", "base_url=http://127.0.0.1:9/v1,model=esc-rank")


def test_the_registry_builds_each_judge_once_per_key(monkeypatch):
    """One build per (judge, backend, args) per process, even from concurrent first calls; other arguments are
    another judge; argument order does not matter; ``clear`` forgets; ``cached`` puts the persistent cache in
    front and is part of the key."""
    built = []

    def builder(args):
        time.sleep(0.05)
        built.append(args)
        return object()

    monkeypatch.setitem(registry.BUILDERS, ("counting", "test"), builder)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.get("counting", "test", {"a": 1, "b": 2})))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and len({id(r) for r in results}) == 1
    assert registry.get("counting", "test", {"b": 2, "a": 1}) is results[0]
    other = registry.get("counting", "test", {"a": 2, "b": 2})
    assert other is not results[0] and len(built) == 2
    registry.clear()
    assert registry.get("counting", "test", {"a": 1, "b": 2}) is not results[0] and len(built) == 3


def test_cached_judges_are_their_own_key(monkeypatch):
    """``cached=True`` wraps the built backend in the persistent cache, and is not confused with the bare one."""

    class Backend:
        def identity(self):
            return {"backend": "test"}

        def complete(self, requests):
            return ["0" for _ in requests]

    monkeypatch.setitem(registry.BUILDERS, ("counting", "test"), lambda args: Backend())
    cached = registry.get("counting", "test", {}, cached=True)
    bare = registry.get("counting", "test", {})
    assert isinstance(cached, CachedJudge) and isinstance(bare, Backend)


def test_every_registered_builder_is_importable_and_matches_the_settings():
    """Each (judge, backend) of the table names a builder that exists; ESC-Eval offers exactly the backends the
    registry holds for its judges, and each MLLMGuard judge runs on one backend. An unknown pair names the known
    ones."""
    for judge, backend in registry.BUILDERS:
        assert callable(registry.builder(judge, backend)), (judge, backend)
    for judge in JUDGES:
        if judge != "none":
            assert registry.backends(judge) == JUDGE_BACKENDS
    for judge in guard_judges.JUDGES:
        assert len(registry.backends(judge)) == 1
    with pytest.raises(ValueError, match="no judge 'esc_rank' on backend 'tgi' .*esc_rank/hf"):
        registry.build("esc_rank", "tgi", {})


def test_both_benchmarks_get_judges_from_the_one_registry():
    """An ESC-Eval judge and an MLLMGuard judge are both held by the registry: ``clear`` makes both new."""
    esc = judging.get_judge(esc_settings("llm_rubric", "openai", "base_url=http://127.0.0.1:9/v1,model=m"))
    guard = guard_judges.get_judge({"judge": "keywords"})
    assert judging.get_judge(esc_settings("llm_rubric", "openai", "base_url=http://127.0.0.1:9/v1,model=m")) is esc
    assert guard_judges.get_judge({"judge": "keywords"}) is guard
    registry.clear()
    assert judging.get_judge(esc_settings("llm_rubric", "openai", "base_url=http://127.0.0.1:9/v1,model=m")) is not esc
    assert guard_judges.get_judge({"judge": "keywords"}) is not guard


def test_one_verdict_with_each_benchmarks_json():
    """One Verdict type for ESC-Eval, MLLMGuard and the report; ESC-Eval's JSON keeps the reference parser's score
    in its place (dimension, score, reference_score, raw), MLLMGuard's has none (dimension, score, raw)."""
    from esc_guard_tasks.report import esc as report_esc

    assert judging.Verdict is guard_judges.Verdict is report_esc.Verdict is Verdict
    esc = judging.verdict_for(dimensions()[0], "Score: 3")
    assert (
        json.dumps(esc.to_json()) == '{"dimension": "fluency", "score": null, "reference_score": 3, "raw": "Score: 3"}'
    )
    guard = guard_judges.judge_verdicts(
        [{"dimension": "bias", "response": "I can't help."}], settings={"judge": "keywords"}
    )
    assert list(guard[0].to_json()) == ["dimension", "score", "raw"]
    assert judging.verdicts_to_json([esc]) == [esc.to_json()]
