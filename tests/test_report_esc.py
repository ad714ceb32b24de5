"""`esc-guard report` on real lm-eval runs: ESC-Eval judged by a tiny ESC-RANK stand-in (both languages, with
samples), merged into a real results file of the same model that holds another task's rows."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from harness_runs import run_cli, tiny_args
from judge_fixtures import build_tiny_judge
from report_fixtures import render_in_chromium

from esc_guard_tasks.cli import main
from esc_guard_tasks.report import merge, table
from esc_guard_tasks.report.esc import esc_dimensions, esc_estimates
from esc_guard_tasks.report.results import ReportInputError
from esc_guard_tasks.report.runs import load_runs

OTHER_TASK = """task: tiny_yes_no
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: ["yes", "no"]
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def judged(tiny_model, card_dir, tmp_path_factory):
    """ESC-Eval, 2 cards per language, 1 round, judged by 14 tiny LoRA adapters, samples logged."""
    work = tmp_path_factory.mktemp("esc_judged")
    base, adapters = build_tiny_judge(work / "judge")
    judge_args = f"pretrained={base},adapters={adapters},device=cpu,max_new_tokens=1"
    args = tiny_args(tiny_model, data_dir=str(card_dir), limit=2, rounds=1, judge="esc_rank", judge_args=judge_args)
    run = run_cli([*args, "--apply_chat_template", "--log_samples"], work / "out")
    (results,) = (work / "out").glob("**/results_*.json")
    return run, results, sorted((work / "out").glob("**/samples_*.jsonl"))


@pytest.fixture(scope="module")
def other(tiny_model, tmp_path_factory):
    """The same model's results file from a run of an unrelated (custom YAML) task."""
    work = tmp_path_factory.mktemp("other")
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"Is {i} even?", "answer": i % 2}) + "\n" for i in range(3)))
    (work / "tasks").mkdir()
    (work / "tasks" / "tiny_yes_no.yaml").write_text(OTHER_TASK.format(data=data))
    args = ["--model", "hf", "--model_args", f"pretrained={tiny_model}", "--device", "cpu", "--batch_size", "4"]
    run_cli([*args, "--tasks", "tiny_yes_no", "--include_path", str(work / "tasks")], work / "out")
    (results,) = (work / "out").glob("**/results_*.json")
    return results


def test_merge_adds_our_rows_leaves_others_untouched_and_is_idempotent(judged, other, tmp_path):
    """Every section gets our tasks' entries (equal to the ESC run's), the other task's entries and all
    top-level fields stay as they were, a second merge changes no byte, and lm-eval's own table printer
    renders the merged file with both tasks."""
    from lm_eval.utils import make_table

    run, results, _ = judged
    into = tmp_path / "model.json"
    shutil.copy(other, into)
    before = json.loads(into.read_text())
    assert main(["report", "merge", "--into", str(into), str(results)]) == 0
    merged = json.loads(into.read_text())
    for section in merge.SECTIONS:
        ours = {k: v for k, v in run.results.get(section, {}).items() if k.startswith("esc_eval")}
        assert ours, section
        assert {k: merged[section][k] for k in ours} == json.loads(json.dumps(ours)), section
        assert {k: v for k, v in merged[section].items() if k not in ours} == before.get(section, {}), section
    assert {k: v for k, v in merged.items() if k not in merge.SECTIONS} == {
        k: v for k, v in before.items() if k not in merge.SECTIONS
    }
    first_bytes = into.read_bytes()
    assert merge.merge_files(into, [results]) is False
    assert into.read_bytes() == first_bytes
    printed = make_table(merged)
    assert "tiny_yes_no" in printed and "esc_eval_en" in printed and "fluency" in printed
    assert "esc_eval" in make_table(merged, "groups")


def test_merge_refuses_another_model_unless_forced(judged, other, tmp_path):
    """A results file of another model is refused with a message naming both files and the differing field;
    the target is not touched; --force merges anyway."""
    _, results, _ = judged
    foreign = json.loads(results.read_text())
    foreign["model_name"] = "someone/else"
    foreign_path = tmp_path / "results_foreign.json"
    foreign_path.write_text(json.dumps(foreign))
    into = tmp_path / "model.json"
    shutil.copy(other, into)
    original = into.read_bytes()
    with pytest.raises(
        merge.ModelMismatchError, match=r"results_foreign.json is not a run of the model of .*model.json.*someone/else"
    ):
        merge.merge_files(into, [foreign_path])
    assert into.read_bytes() == original
    assert merge.merge_files(into, [foreign_path], force=True)
    assert "esc_eval_en" in json.loads(into.read_text())["results"]


def test_interrupted_merge_leaves_the_old_file(judged, other, tmp_path, monkeypatch):
    """If the process dies between writing and replacing, the target keeps its old bytes and no temporary
    file is left behind."""
    _, results, _ = judged
    into = tmp_path / "model.json"
    shutil.copy(other, into)
    original = into.read_bytes()

    def crash(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(merge.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        merge.merge_files(into, [results])
    assert into.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_merge_rejects_a_file_without_our_rows(other, tmp_path):
    """Merging a results file that has no ESC-Eval/MLLMGuard entries is an error naming it."""
    into = tmp_path / "model.json"
    shutil.copy(other, into)
    with pytest.raises(ReportInputError, match="no ESC-Eval or MLLMGuard entries"):
        merge.merge_files(into, [other])


def test_table_formats_carry_the_run_values(judged, tmp_path):
    """Markdown, CSV and LaTeX hold one row per language and the group, with the results' values."""
    import pandas as pd

    run, results, _ = judged
    out = tmp_path / "table.csv"
    main(["report", "table", str(results), "--format", "csv", "--output", str(out)])
    frame = pd.read_csv(out)
    assert list(frame["task"]) == ["esc_eval_en", "esc_eval_zh", "esc_eval"]
    for _, row in frame.iterrows():
        source = run.results["results"].get(row["task"]) or run.results["groups"][row["task"]]
        for name in (*esc_dimensions(), "average"):
            assert row[name] == pytest.approx(source[f"{name},none"], abs=0.005)
    runs = load_runs([results])
    latex = table.leaderboard(runs, "latex")
    assert "\\begin{tabular}" in latex and "esc\\_eval\\_en" in latex
    markdown = table.leaderboard(runs, "markdown")
    assert f"{run.results['results']['esc_eval_en']['average,none']:.2f}" in markdown


def test_html_report_from_real_samples(judged, tmp_path):
    """The report embeds a chart per language, shows every sample's turns, scores and raw judge replies, its
    CIs come from the samples (reproducible with the fixed seed, containing the results' value), and it renders
    in headless Chromium with no console output."""
    run, results, samples = judged
    runs = load_runs([results], samples)
    task = "esc_eval_en"
    estimates = esc_estimates(runs[0], task, seed=1, resamples=200)
    assert estimates == esc_estimates(runs[0], task, seed=1, resamples=200)
    for name, estimate in zip((*esc_dimensions(), "average"), estimates, strict=True):
        assert estimate.value == run.results["results"][task][f"{name},none"]
        assert estimate.low <= estimate.value <= estimate.high or math.isnan(estimate.low)
    page = tmp_path / "report.html"
    main(["report", "html", str(results), "--samples", *map(str, samples), "--output", str(page), "--resamples", "200"])
    text = page.read_text("utf-8")
    assert text.count("data:image/png;base64,") == 2  # one chart per language
    for sample in run.samples[task]:
        record = json.loads(sample["filtered_resps"][0])
        assert f"card {record['transcript']['card_id']} (en)" in text
        for verdict in record["verdicts"]:
            assert f"<pre>{verdict['raw']}</pre>" in text
    rendered = render_in_chromium(page, tmp_path)
    assert rendered.console == []
    assert rendered.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "of 4 samples" in rendered.dom  # the filter script ran


def test_agreement_on_real_samples(judged, tmp_path):
    """Labels equal to the judge on one dimension give ACC 100; labels one point off give ACC 0 and
    ACC_soft 100; a label for a card that was not run and the cards without labels are both reported."""
    from esc_guard_tasks.report import agreement

    run, _, samples = judged
    lines = []
    for task in ("esc_eval_en", "esc_eval_zh"):
        for sample in run.samples[task]:
            record = json.loads(sample["filtered_resps"][0])
            scores = {v["dimension"]: v["score"] for v in record["verdicts"]}
            lines.append(
                {
                    "card_id": record["transcript"]["card_id"],
                    "language": record["transcript"]["language"],
                    "scores": {
                        "fluency": scores["fluency"],
                        "empathy": scores["empathy"] + (1 if scores["empathy"] < 4 else -1),
                    },
                }
            )
    kept = lines[:-1]  # one judged dialogue stays unlabelled
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(json.dumps(x) + "\n" for x in [*kept, {"card_id": 99999, "language": "zh", "scores": {"fluency": 1}}])
    )
    result = agreement.report([labels], samples, resamples=200)
    rows = {row["dimension"]: row for row in result["rows"]}
    assert rows["fluency"]["n"] == len(kept) and rows["fluency"]["acc"]["value"] == 100.0
    assert rows["empathy"]["acc"]["value"] == 0.0 and rows["empathy"]["acc_soft"]["value"] == 100.0
    assert result["unmatched"]["labels_without_sample"] == [f"{labels}:{len(kept) + 1}: esc_eval (99999, 'zh')"]
    assert len(result["unmatched"]["samples_without_label"]) == 1
