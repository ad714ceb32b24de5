"""The benchmark suite's instruments (``benchmarks/``): what they measure must be what runs without them.

No timings are asserted here (targets live in ``benchmarks/REPORT.md``); these tests keep the measuring code
honest and the report renderable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import dialogue, fixtures  # noqa: E402
from benchmarks.report import write_report  # noqa: E402


@pytest.fixture(scope="module")
def lm(tiny_model):
    return dialogue.load_hflm(tiny_model, batch_size=8)


def test_forward_clock_splits_prefill_and_decode_without_changing_the_computation(lm):
    """Under the clock, generate() still limits the prefill's LM head to the last position (it reads forward's
    signature), returns the same tokens, and the clock counts one prefill over the padded batch and one decode
    pass per further token."""
    import torch

    model = lm.model
    ids = torch.tensor([[5, 6, 7, 8, 9], [3, 3, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])

    def generate():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4,
                                  do_sample=False, pad_token_id=3)  # fmt: skip

    bare = generate()
    with dialogue.forward_clock(model) as times:
        assert model._supports_logits_to_keep()
        clocked = generate()
    assert torch.equal(bare, clocked)
    assert (times.prefill_tokens, times.decode_steps) == (ids.numel(), 3)
    assert times.prefill_s > 0 and times.decode_s > 0
    assert "forward" not in vars(model)  # the method is restored


def test_recorded_engine_run_replays_to_the_same_calls_and_splits_its_time(lm):
    """The recorded run gives the transcripts of a plain engine run; each recorded generate call holds its
    padded inputs and new-token count, per speaker's budget (the raw replay regenerates exactly those slots);
    the time inside lm-eval covers the time inside the generate calls."""
    settings = dialogue.DialogueSettings(rounds=2, max_new_tokens=4, batch_size=8, supporter_new_tokens=6)
    cards = fixtures.cards(3)
    recorded = dialogue.run_engine_recorded(lm, cards, settings)
    plain = dialogue.run_engine(lm, cards, settings)
    assert [[t.text for t in d.turns] for d in recorded.transcripts] == [[t.text for t in d.turns] for d in plain]
    assert len(recorded.calls) == 4  # 2 rounds × 2 speakers, one batch each
    assert [c.inputs["input_ids"].shape[0] for c in recorded.calls] == [3, 3, 3, 3]
    assert 0 < sum(c.seconds for c in recorded.calls) <= recorded.harness_s
    slots = sum(c.new_tokens * c.inputs["input_ids"].shape[0] for c in recorded.calls)
    assert dialogue.run_raw(lm, recorded.calls) == slots
    assert [c.new_tokens for c in recorded.calls] == [4, 6, 4, 6]  # the per-speaker budgets (no row stops early)


def test_trials_share_the_engine_calls(lm):
    """The trials measurement runs what the task runs: three trials of N cards are 3·N dialogues in the same
    generate calls as one trial (each call three times wider)."""
    settings = dialogue.DialogueSettings(rounds=2, max_new_tokens=4, batch_size=8)
    cards = fixtures.cards(2)
    one = dialogue.run_engine_recorded(lm, cards, settings)
    three = dialogue.run_engine_recorded(lm, cards, settings, trials=3)
    assert len(three.transcripts) == 6 and len(three.calls) == len(one.calls) == 4
    assert [c.inputs["input_ids"].shape[0] for c in three.calls] == [6] * 4


def test_report_renders_every_section_from_the_committed_results(tmp_path):
    """benchmarks/results/latest.json renders into a report with the targets table, every measured section,
    the plot and the hand-written analysis."""
    results = json.loads((REPO / "benchmarks" / "results" / "latest.json").read_text("utf-8"))
    report, plot = tmp_path / "REPORT.md", tmp_path / "speedup.png"
    write_report(results, report, plot)
    text = report.read_text("utf-8")
    for heading in (
        "## Against the targets",
        "## Where the time goes",
        "## Batching ceiling",
        "## Attention kernels",
        "## Memory",
        "## Trials: `trials=3` against `trials=1`",
        "## ESC-RANK scoring",
        "## GuardRank scoring",
        "## vLLM",
        "## Why targets are missed here, and what was tried",
    ):
        assert heading in text, heading
    largest = max((r for r in results["dialogues"] if r["model"].startswith("tiny")), key=lambda r: r["n"])
    assert f"| engine vs sequential reference (tiny, N={largest['n']}) | ≥ 10× | {largest['speedup']}× |" in text
    assert plot.stat().st_size > 10_000
