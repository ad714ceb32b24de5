"""The in-process ESC-RANK judge (transformers + peft): faithful rendering, adapters, modes, cache, harness."""

from __future__ import annotations

import json
import math

import pytest
from harness_runs import one_round_run
from judge_fixtures import ADAPTER_FOLDERS, build_tiny_judge

from esc_guard_tasks.esc_eval.judging import judge_request, score_dialogues
from esc_guard_tasks.esc_eval.protocol import Transcript
from esc_guard_tasks.esc_eval.rubric import SCORE_LABELS, dimensions
from esc_guard_tasks.judges.base import JudgeRequest
from esc_guard_tasks.judges.cache import CachedJudge
from esc_guard_tasks.judges.hf_lora import HFLoraJudge


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    return build_tiny_judge(tmp_path_factory.mktemp("judge"))


@pytest.fixture(scope="module")
def judge(tiny_judge):
    base, adapters = tiny_judge
    folders = {name: str(adapters / name) for name in ADAPTER_FOLDERS}
    return HFLoraJudge(str(base), folders, device="cpu", batch_size=4, max_new_tokens=1, labels=SCORE_LABELS)


@pytest.fixture(scope="module")
def sample(transcripts):
    """One dialogue per file (2 EN, 2 ZH): enough for model-backed checks, cheap on a CPU."""
    return transcripts[::3]


def test_prompt_tokens_are_internlm2_chat_with_one_bos(judge):
    """The judge's input is exactly BOS + InternLM2 chat() prompt: template renders it, BOS not doubled."""
    request = JudgeRequest.chat([{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q"}], "fluency")
    tokenizer = judge.tokenizer
    chat = "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    expected = [tokenizer.bos_token_id] + tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert judge.render(request) == expected
    assert judge.render(request).count(tokenizer.bos_token_id) == 1


def test_scores_all_dialogues_with_the_right_adapters(judge, sample):
    """Dialogues of both languages × 7 dimensions in one call; replies depend on the adapter (LoRAs applied)."""
    verdicts = score_dialogues(judge, sample, "esc_rank")
    assert len(verdicts) == 4 and all(len(v) == 7 for v in verdicts)
    scores = [v.score for dialogue in verdicts for v in dialogue]
    assert sum(s is not None for s in scores) >= 0.9 * len(scores)
    assert len({tuple(v.score for v in dialogue) for dialogue in verdicts}) > 1
    one = sample[0]
    requests = [JudgeRequest.chat([{"role": "user", "content": "same text"}], name) for name in ADAPTER_FOLDERS]
    assert len(set(judge.complete(requests))) > 1, "all adapters answered alike: LoRA weights not applied"
    assert one.language in ("en", "zh")


def test_batching_does_not_change_greedy_replies(judge, sample):
    """Batched judging equals one-at-a-time judging (the reference's loop) on the same inputs."""
    batched = score_dialogues(judge, sample, "esc_rank")
    single = [score_dialogues(judge, [t], "esc_rank")[0] for t in sample]
    assert batched == single


def test_logits_mode_equals_generation_when_the_first_token_is_a_digit(tiny_judge, judge, sample):
    """score_mode=logits (one forward pass, argmax over '0'..'4') gives the generated score whenever the
    greedily generated first token is a digit."""
    base, adapters = tiny_judge
    logits_judge = HFLoraJudge(
        str(base),
        {n: str(adapters / n) for n in ADAPTER_FOLDERS},
        device="cpu",
        batch_size=4,
        score_mode="logits",
        labels=SCORE_LABELS,
    )
    generated = score_dialogues(judge, sample, "esc_rank")
    from_logits = score_dialogues(logits_judge, sample, "esc_rank")
    compared = 0
    for gen_dialogue, log_dialogue in zip(generated, from_logits, strict=True):
        for gen, log in zip(gen_dialogue, log_dialogue, strict=True):
            assert log.score is not None
            if gen.raw in SCORE_LABELS:
                assert log.score == gen.score
                compared += 1
    assert compared >= 0.9 * 4 * 7


def test_logits_mode_does_not_depend_on_the_batch(tiny_judge, sample):
    """Right-padded, maskless logits scoring of prompts of different lengths equals scoring each alone:
    the pads after a prompt never reach its last position, and each row is read at its own end."""
    base, adapters = tiny_judge
    folders = {n: str(adapters / n) for n in ADAPTER_FOLDERS}
    batched, single = (
        HFLoraJudge(str(base), folders, device="cpu", batch_size=size, score_mode="logits", labels=SCORE_LABELS)
        for size in (8, 1)
    )
    requests = [r for t in sample for r in (judge_request(t, d, "esc_rank") for d in dimensions()[:2])]
    assert len({len(batched.render(r)) for r in requests}) > 1, "the batch must mix prompt lengths"
    assert batched.complete(requests) == single.complete(requests)


def test_cache_serves_a_second_run_without_calling_the_judge(tmp_path, transcripts):
    """Same judge identity + adapter + input: the second run is served from disk; a new identity is not."""

    class Counting:
        def __init__(self, name):
            self.name, self.calls = name, 0

        def identity(self):
            return {"backend": "counting", "name": self.name}

        def complete(self, requests):
            self.calls += len(requests)
            return [str(len(r.messages[-1]["content"]) % 5) for r in requests]

    backend = Counting("a")
    first = score_dialogues(CachedJudge(backend, tmp_path / "c.sqlite"), transcripts, "esc_rank")
    assert backend.calls == 84
    cached = CachedJudge(backend, tmp_path / "c.sqlite")
    assert score_dialogues(cached, transcripts, "esc_rank") == first
    assert backend.calls == 84 and cached.stats.cache_hits == 84
    other = Counting("b")
    score_dialogues(CachedJudge(other, tmp_path / "c.sqlite"), transcripts, "esc_rank")
    assert other.calls == 84


def test_esc_eval_with_esc_rank_prints_dimension_rows(tiny_model, tiny_judge, card_dir, tmp_path, monkeypatch):
    """lm_eval --tasks esc_eval with judge=esc_rank: 7 dimensions + average (0–100, with stderr), invalid rate;
    verdicts with raw replies in the samples; the judge's identity in the results."""
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache"))
    base, adapters = tiny_judge
    esc_rank = {"judge": "esc_rank", "judge_args": f"pretrained={base},adapters={adapters},device=cpu,max_new_tokens=1"}
    run = one_round_run(tiny_model, tmp_path / "out", "--log_samples", data_dir=str(card_dir), limit=3, **esc_rank)
    rows = run.results["results"]
    for task in ("esc_eval", "esc_eval_en", "esc_eval_zh"):
        for metric in ("fluency", "expression", "empathy", "information", "skillful", "humanoid", "overall", "average"):
            value = rows[task][f"{metric},none"]
            assert math.isnan(value) or 0 <= value <= 100
            assert f"{metric}_stderr,none" in rows[task]
        assert 0 <= rows[task]["invalid_rate,none"] <= 1
    assert isinstance(rows["esc_eval_en"]["average_stderr,none"], float)
    record = json.loads(run.samples["esc_eval_zh"][0]["filtered_resps"][0])
    assert [v["dimension"] for v in record["verdicts"]][:2] == ["fluency", "expression"]
    assert {"score", "reference_score", "raw"} <= set(record["verdicts"][0])
    judge_meta = run.results["configs"]["esc_eval_en"]["metadata"]["esc_eval"]["judge"]
    assert judge_meta["judge"] == "esc_rank" and judge_meta["args"]["pretrained"] == str(base)


def test_predict_only_never_loads_the_judge(tiny_model, card_dir, tmp_path, monkeypatch):
    """--predict_only with judge=esc_rank produces dialogues and never builds a judge."""
    import esc_guard_tasks.esc_eval.judging as judging

    def forbidden(settings):
        raise AssertionError("judge loaded under --predict_only")

    monkeypatch.setattr(judging, "build_backend", forbidden)
    esc_rank = {"judge": "esc_rank", "judge_args": "pretrained=/nonexistent"}
    run = one_round_run(tiny_model, tmp_path, "--predict_only", data_dir=str(card_dir), limit=1, **esc_rank)
    assert len(run.transcripts("esc_eval_en")) == 1


def test_rescore_judges_saved_dialogues_in_the_harness_format(
    tiny_model, tiny_judge, judge, card_dir, tmp_path, monkeypatch
):
    """`esc-guard rescore` judges a judge=none run's saved dialogues without regenerating them: same
    transcripts, verdicts equal to judging them directly, lm-eval results and samples files with group rows."""
    from esc_guard_tasks.cli import main

    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache"))
    first = one_round_run(tiny_model, tmp_path / "first", "--log_samples", data_dir=str(card_dir), limit=2)
    files = sorted(first.output.glob("**/samples_esc_eval_*.jsonl"))
    base, adapters = tiny_judge
    assert (
        main(
            [
                "rescore",
                *map(str, files),
                "--judge-args",
                f"pretrained={base},adapters={adapters},device=cpu,max_new_tokens=1",
                "--output",
                str(tmp_path / "again"),
            ]
        )
        == 0
    )
    from harness_runs import read_run

    again = read_run(tmp_path / "again")
    assert {"esc_eval", "esc_eval_en", "esc_eval_zh"} <= set(again.results["results"])
    assert "fluency,none" in again.results["results"]["esc_eval"]
    for task in ("esc_eval_en", "esc_eval_zh"):
        records = [json.loads(s["filtered_resps"][0]) for s in again.samples[task]]
        originals = first.transcripts(task)
        assert [r["transcript"] for r in records] == originals
        direct = score_dialogues(judge, [Transcript.from_dict(t) for t in originals], "esc_rank")
        assert [[v["score"] for v in r["verdicts"]] for r in records] == [[v.score for v in d] for d in direct]


def test_evaluate_module_scores_reference_transcripts(tiny_judge, judge, esc_data, tmp_path, monkeypatch):
    """ESC-RANK as an `evaluate` module from the installed package: per-dimension means equal judging directly."""
    from esc_guard_tasks.esc_rank import load_metric

    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = [
        v for k, v in sorted(json.loads((esc_data / "result/2024-06-24/llama3_en.json").read_text("utf-8")).items())
    ]
    base, adapters = tiny_judge
    result = load_metric().compute(
        dialogues=lines, language="en", judge_args=f"pretrained={base},adapters={adapters},device=cpu,max_new_tokens=1"
    )
    direct = score_dialogues(
        judge, [Transcript.from_reference_lines(x, i, "en") for i, x in enumerate(lines)], "esc_rank"
    )
    fluency = [d[0].score * 25 for d in direct if d[0].score is not None]
    assert result["fluency"] == pytest.approx(sum(fluency) / len(fluency))
    assert len(result["verdicts"]) == 3 and len(result["verdicts"][0]) == 7
    assert 0 <= result["invalid_rate"] <= 1
