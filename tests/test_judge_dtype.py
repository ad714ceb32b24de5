"""ESC-RANK's precision: float16 by default, as the reference scorer (score.py) loads it; ``dtype=`` overrides."""

from __future__ import annotations

import pytest
import torch
from judge_fixtures import build_tiny_judge

from esc_guard_tasks.esc_eval.judging import build_backend
from esc_guard_tasks.esc_eval.settings import ESCSettings


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    return build_tiny_judge(tmp_path_factory.mktemp("judge"))


def _judge(judge: str, judge_args: str):
    return build_backend(ESCSettings(judge=judge, judge_backend="hf", judge_args=judge_args))


def base_dtypes(judge) -> set[torch.dtype]:
    """The base model's weights (peft keeps the LoRA weights themselves in float32 by default)."""
    return {p.dtype for name, p in judge.model.named_parameters() if "lora_" not in name}


def test_esc_rank_loads_in_float16_unless_dtype_says_otherwise(tiny_judge):
    """judge=esc_rank on hf: weights in float16 and ``dtype: float16`` in the identity (results, cache key);
    ``dtype=float32`` in judge_args wins."""
    base, adapters = tiny_judge
    args = f"pretrained={base},adapters={adapters},device=cpu"
    default = _judge("esc_rank", args)
    assert default.identity()["dtype"] == "float16"
    assert base_dtypes(default) == {torch.float16}
    chosen = _judge("esc_rank", f"{args},dtype=float32")
    assert chosen.identity()["dtype"] == "float32"
    assert base_dtypes(chosen) == {torch.float32}


def test_llm_rubric_keeps_the_models_own_precision(tiny_judge):
    """Any chat model given the rubric (llm_rubric) loads as its checkpoint says (``auto``), not forced to half."""
    base, _ = tiny_judge
    judge = _judge("llm_rubric", f"pretrained={base},device=cpu")
    assert judge.identity()["dtype"] == "auto"
    assert base_dtypes(judge) == {torch.float32}
