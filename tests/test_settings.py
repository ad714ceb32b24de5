"""Settings: --metadata beats ESC_EVAL_<KEY>, defaults follow the reference, bad values name their source."""

from __future__ import annotations

import pytest

from esc_guard_tasks.esc_eval.settings import DEFAULT_ROLE_GEN_KWARGS, ESCSettings


def test_defaults_follow_the_reference():
    """ESC-Role on hf with Qwen1.5-Chat sampling, 512 new tokens, 5 rounds; ESC-RANK on hf judges."""
    s = ESCSettings.from_sources({}, {})
    assert (s.role_model, s.rounds, s.judge, s.judge_backend) == ("hf", 5, "esc_rank", "hf")
    assert s.role_player_identity()["model"] == "haidequanbu/ESC-Role"
    assert s.role_gen_kwargs == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "repetition_penalty": 1.05,
        "max_gen_toks": 512,
    }


def test_metadata_wins_over_environment():
    s = ESCSettings.from_sources(
        {"rounds": 3, "role_model": "vllm"},
        {"ESC_EVAL_ROUNDS": "7", "ESC_EVAL_SEED": "9", "ESC_EVAL_ROLE_MODEL": "hf"},
    )
    assert (s.rounds, s.seed, s.role_model) == (3, 9, "vllm")


def test_model_args_leaking_into_metadata_are_ignored():
    """lm-eval merges --model_args into task metadata; those keys must not break or change settings."""
    s = ESCSettings.from_sources({"pretrained": "x", "dtype": "float32", "rounds": "2"}, {})
    assert s.rounds == 2 and s.role_player_identity()["model"] == "haidequanbu/ESC-Role"


def test_role_gen_kwargs_override_defaults_key_by_key():
    """Overriding one decoding key keeps the other reference defaults (JSON and k=v forms)."""
    from_json = ESCSettings.from_sources({"role_gen_kwargs": {"max_gen_toks": 64}}, {})
    from_env = ESCSettings.from_sources({}, {"ESC_EVAL_ROLE_GEN_KWARGS": "max_gen_toks=64,temperature=0.5"})
    assert from_json.role_gen_kwargs == DEFAULT_ROLE_GEN_KWARGS | {"max_gen_toks": 64}
    assert from_env.role_gen_kwargs == DEFAULT_ROLE_GEN_KWARGS | {"max_gen_toks": 64, "temperature": 0.5}
    env_json = ESCSettings.from_sources({}, {"ESC_EVAL_ROLE_GEN_KWARGS": '{"top_k": 5, "repetition_penalty": null}'})
    assert env_json.role_gen_kwargs["top_k"] == 5
    assert "repetition_penalty" not in env_json.role_gen_kwargs  # null removes a default


@pytest.mark.parametrize(
    ("metadata", "environ", "message"),
    [
        ({"rounds": "five"}, {}, "--metadata key 'rounds': must be an integer"),
        ({}, {"ESC_EVAL_ROUNDS": "0"}, "environment variable ESC_EVAL_ROUNDS: must be at least 1"),
        ({"judge": "gpt"}, {}, "--metadata key 'judge': must be one of esc_rank, llm_rubric, none"),
        ({}, {"ESC_EVAL_JUDGE_BACKEND": "tgi"}, "ESC_EVAL_JUDGE_BACKEND: must be one of hf, vllm, openai"),
        ({"role_gen_kwargs": "{not json"}, {}, "'role_gen_kwargs': must be a JSON object"),
    ],
)
def test_bad_values_name_their_source(metadata, environ, message):
    with pytest.raises(ValueError, match=message):
        ESCSettings.from_sources(metadata, environ)


def test_identities_never_carry_secrets():
    """Arguments that look like credentials are dropped from what is written to results; a credential in
    judge_args (which no judge backend accepts: keys come from the environment) is refused without echoing it."""
    s = ESCSettings.from_sources(
        {
            "role_model": "local-chat-completions",
            "role_model_args": "model=m,base_url=http://x,api_key=SENTINEL",
            "judge": "llm_rubric",
            "judge_backend": "openai",
            "judge_args": "base_url=http://x/v1,model=j",
        },
        {},
    )
    assert "SENTINEL" not in repr(s.describe())
    assert s.describe()["role_player"]["model"] == "m"
    with pytest.raises(ValueError, match="read only from the environment") as refused:
        ESCSettings.from_sources({"judge_args": "model=j,token=SENTINEL"}, {})
    assert "SENTINEL" not in str(refused.value)
