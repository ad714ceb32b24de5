"""Offline, a model id that is not in the cache fails naming the model and the setting that chose it (transformers'
own error names neither), for the role-player, the judge and ``hf_image_text``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

MISSING = "esc-guard-tests/not-a-cached-model"
PROGRAMS = {
    "judge": f"""
from esc_guard_tasks.judges.hf_lora import HFLoraJudge
HFLoraJudge({MISSING!r}, device="cpu")
""",
    "role_player": f"""
from esc_guard_tasks.esc_eval.settings import ESCSettings
from esc_guard_tasks.harness.lm_eval_chat import role_player_lm
role_player_lm(ESCSettings(role_model_args="pretrained={MISSING},device=cpu,batch_size=1"), None)
""",
    "hf_image_text": f"""
from esc_guard_tasks.harness.lmms_eval_model import HFImageTextModel
HFImageTextModel(pretrained={MISSING!r}, device="cpu")
""",
}


def fails_offline(program: str) -> str:
    """Run ``program`` with the hub offline; it must fail with ModelLoadError; that error's message."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode != 0
    marker = "esc_guard_tasks.hub.ModelLoadError: "
    assert marker in result.stderr, result.stderr[-3000:]
    return result.stderr.split(marker, 1)[1]


@pytest.mark.parametrize(
    ("loader", "setting"), [("judge", "judge_args pretrained"), ("role_player", "role_model_args")]
)
def test_an_uncached_model_names_itself_and_its_setting(loader, setting):
    """The judge (judge_args pretrained) and the role-player (role_model_args) name the missing model, the
    setting and the HF_HUB_OFFLINE advice."""
    message = fails_offline(PROGRAMS[loader])
    assert MISSING in message and f"(set by {setting})" in message and "HF_HUB_OFFLINE=1" in message


@pytest.mark.lmms
@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed here")
def test_hf_image_text_names_the_uncached_model_and_model_args():
    """hf_image_text names the missing checkpoint and --model_args pretrained."""
    message = fails_offline(PROGRAMS["hf_image_text"])
    assert MISSING in message and "(set by --model_args pretrained)" in message
