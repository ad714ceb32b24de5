"""A run judged by ``llm_rubric`` says, in its results and once in its log, that its scores are not ESC-RANK's."""

from __future__ import annotations

import logging

from harness_runs import one_round_run, served_judge
from loopback_server import LoopbackChatServer

from esc_guard_tasks.harness import lm_eval_task
from esc_guard_tasks.judges import registry


def test_llm_rubric_results_and_log_carry_the_comparability_note(tiny_model, tmp_path, monkeypatch, caplog, capfd):
    """Both tasks' results metadata hold the note (naming ESC-RANK and the paper's judge comparison) beside the
    identity of the judge that replied, and the log has the note exactly once for the run."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(registry, "_BUILT", {})
    monkeypatch.setattr(lm_eval_task, "_NOTED", set())
    with LoopbackChatServer(lambda body: "3") as server:
        served = served_judge(server, "llm_rubric", ",model=gpt-4")
        run = one_round_run(tiny_model, tmp_path / "out", tasks="esc_eval_demo", limit=1, **served)
    for task in ("esc_eval_demo_en", "esc_eval_demo_zh"):
        judge = run.results["configs"][task]["metadata"]["esc_eval"]["judge"]
        assert judge["note"] == lm_eval_task.LLM_RUBRIC_NOTE
        assert judge["identity"]["backend"] == "openai" and judge["identity"]["model"] == "gpt-4"
    assert "not comparable with ESC-RANK" in lm_eval_task.LLM_RUBRIC_NOTE and "Table 4" in lm_eval_task.LLM_RUBRIC_NOTE
    logs = caplog.text + capfd.readouterr().err  # lm-eval's CLI logs its own loggers to stderr
    assert logs.count(lm_eval_task.LLM_RUBRIC_NOTE) == 1
    assert run.results["results"]["esc_eval_demo_en"]["fluency,none"] == 75.0
