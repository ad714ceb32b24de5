"""ESC-Eval's ``average`` row is the paper's Average: the mean of the seven dimension rows as printed.

With invalid judge replies the mean of per-dialogue averages differs from it (each dimension row leaves out
its own invalid replies); these tests make sure the printed ``average`` is the paper's statistic in every task
and in the group, and that its stderr bootstraps that same statistic over dialogues.
"""

from __future__ import annotations

import functools
import hashlib
import math
import pickle
from typing import Any

import numpy as np
import pytest
from harness_runs import one_round_run, served_judge
from lm_eval.api.metrics import bootstrap_stderr
from loopback_server import LoopbackChatServer

from esc_guard_tasks.esc_eval.rubric import dimensions
from esc_guard_tasks.judges import registry
from esc_guard_tasks.metrics.esc_eval import DialogueScores, dimension_scores, mean_of_dimensions

DIMENSIONS = [d.metric for d in dimensions()]
NAN = math.nan
BOOTSTRAP_ITERS = 1000  # lm-eval's stderr resamples in the CLI run (default 100000: most of a tiny run's time)


def test_mean_of_dimensions_is_the_mean_of_the_dimension_rows():
    """Two dialogues, one with six invalid replies: the mean of the seven dimension means (650/7), not the mean
    of the two per-dialogue means (50); each item still reads as its dialogue's own mean of valid scores."""
    first = DialogueScores([100, 100, 100, 100, 100, 100, 100])
    second = DialogueScores([0, NAN, NAN, NAN, NAN, NAN, NAN])
    assert float(first) == 100 and float(second) == 0
    rows = [50, 100, 100, 100, 100, 100, 100]
    assert mean_of_dimensions([first, second]) == pytest.approx(sum(rows) / 7)
    assert mean_of_dimensions([first, second]) != pytest.approx((100 + 0) / 2)


def test_a_dimension_without_any_valid_score_makes_the_average_nan():
    """A NaN dimension row is printed as NaN, so the mean of the printed rows is NaN too (never a mean of six)."""
    items = [DialogueScores([NAN, 50, 50, 50, 50, 50, 50]), DialogueScores([NAN, 0, 0, 0, 0, 0, 0])]
    assert math.isnan(mean_of_dimensions(items))
    assert math.isnan(mean_of_dimensions([]))


def test_dialogue_scores_survive_pickling_and_reject_plain_numbers():
    """Items cross data-parallel ranks and lm-eval's bootstrap worker processes by pickle with their scores;
    a plain number (which has lost the dimension scores) is refused, not averaged."""
    item = DialogueScores([75, NAN, 25, 0, 100, 50, 50])
    copy = pickle.loads(pickle.dumps(item))
    assert copy.scores[0] == 75 and math.isnan(copy.scores[1]) and float(copy) == float(item)
    with pytest.raises(TypeError, match="DialogueScores"):
        mean_of_dimensions([75.0])  # type: ignore[list-item]


def test_dimension_scores_carry_the_seven_scores_in_dimension_order():
    """process_results' ``average`` item holds the seven 0–100 scores in the printed order (NaN = invalid)."""
    verdicts = [{"dimension": d, "score": s} for d, s in zip(DIMENSIONS, [3, None, 1, 4, 0, 2, None], strict=True)]
    average = dimension_scores(verdicts)["average"]
    assert [None if math.isnan(s) else s for s in average.scores] == [75, None, 25, 100, 0, 50, None]
    assert float(average) == pytest.approx((75 + 25 + 100 + 0 + 50) / 5)


def test_lm_eval_bootstraps_the_stderr_of_the_average_over_dialogues():
    """The task module makes lm-eval bootstrap ``average`` (lm-eval prints "N/A" for a task's own aggregation):
    the stderr is lm-eval's bootstrap_stderr of mean_of_dimensions over dialogues; other metrics keep theirs."""
    import lm_eval.evaluator_utils as evaluator_utils
    from lm_eval.api.metrics import mean, mean_stderr, nanmean

    import esc_guard_tasks.harness.lm_eval_task  # noqa: F401 - installs the stderr

    rng = np.random.default_rng(7)
    scores = rng.integers(0, 5, size=(40, 7)) * 25.0
    scores[rng.random((40, 7)) < 0.1] = NAN
    items = [DialogueScores(row) for row in scores]
    stderr = evaluator_utils.stderr_for_metric(mean_of_dimensions, 500)
    assert stderr is not None and 0 < stderr(items) == pytest.approx(bootstrap_stderr(mean_of_dimensions, items, 500))
    assert evaluator_utils.stderr_for_metric(mean_of_dimensions, 0) is None
    assert evaluator_utils.stderr_for_metric(mean, 500) is mean_stderr
    assert evaluator_utils.stderr_for_metric(nanmean, 500) is not None


def served_scores(body: dict[str, Any]) -> str:
    """The judge server: a digit for most requests, an invalid reply for about one in three (a function of the
    request, so both tasks see invalid replies in different dimensions of different dialogues)."""
    key = body["model"] + "\n" + body["messages"][-1]["content"]
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16)
    return "I would rather not score this." if h % 3 == 0 else str(h % 5)


def test_lm_eval_prints_the_mean_of_the_dimension_rows_in_every_task_and_the_group(tiny_model, tmp_path, monkeypatch):
    """A real ``lm_eval`` run of the esc_eval_demo group judged with invalid replies: each task's ``average``
    equals the mean of its seven printed dimension rows and differs from the mean of per-dialogue averages;
    the group's ``average`` equals the mean of the group's seven rows; each task's ``average_stderr`` is lm-eval's
    bootstrap over dialogues of that same statistic."""
    import lm_eval

    monkeypatch.setattr(
        lm_eval, "simple_evaluate", functools.partial(lm_eval.simple_evaluate, bootstrap_iters=BOOTSTRAP_ITERS)
    )
    with LoopbackChatServer(served_scores) as server:
        monkeypatch.setattr(registry, "_BUILT", {})
        run = one_round_run(
            tiny_model, tmp_path / "out", "--log_samples", tasks="esc_eval_demo", limit=3, **served_judge(server)
        )
    rows = run.results["results"]
    for task in ("esc_eval_demo_en", "esc_eval_demo_zh"):
        samples = run.samples[task]
        per_dialogue = np.array([[s[d] for d in DIMENSIONS] for s in samples], dtype=float)
        assert np.isnan(per_dialogue).any(), "the scenario needs invalid replies"
        printed = [rows[task][f"{d},none"] for d in DIMENSIONS]
        assert rows[task]["average,none"] == pytest.approx(sum(printed) / 7)
        mean_of_dialogue_means = float(np.mean([np.nanmean(row) for row in per_dialogue]))
        assert rows[task]["average,none"] != pytest.approx(mean_of_dialogue_means)
        assert [s["average"] for s in samples] == pytest.approx([np.nanmean(row) for row in per_dialogue])
        items = [DialogueScores(row) for row in per_dialogue]
        # three dialogues: some resamples hold no valid score of a dimension, so this stderr (like the
        # dimension rows') may be NaN; it must still be the same bootstrap of the same statistic
        reproduced = bootstrap_stderr(mean_of_dimensions, items, iters=BOOTSTRAP_ITERS)
        assert rows[task]["average_stderr,none"] == pytest.approx(reproduced, nan_ok=True)
    group = rows["esc_eval_demo"]
    assert group["average,none"] == pytest.approx(sum(group[f"{d},none"] for d in DIMENSIONS) / 7)
    assert isinstance(group["average_stderr,none"], float)
