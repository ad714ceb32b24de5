"""`esc-guard report` on hand-made edge cases: missing dimensions, a single sample, NaN/undefined metrics,
mixed languages, bad label files, and hostile text (escaped everywhere, checked in headless Chromium)."""

from __future__ import annotations

import json
import math
import re

import pytest
from report_fixtures import (
    PAYLOAD,
    XSS_ONERROR,
    XSS_SCRIPT,
    esc_row,
    esc_sample,
    guard_sample,
    render_in_chromium,
    write_run,
)

from esc_guard_tasks.report import agreement, html, table
from esc_guard_tasks.report.esc import esc_estimates
from esc_guard_tasks.report.guard import mllmguard_rows
from esc_guard_tasks.report.results import ReportInputError
from esc_guard_tasks.report.runs import load_runs
from esc_guard_tasks.report.stats import bootstrap

ALL = ("fluency", "expression", "empathy", "information", "humanoid", "skillful", "overall")


def test_table_shows_missing_dimensions_and_nan_as_not_available(tmp_path):
    """A row without some dimensions and a NaN metric give 'n/a' cells (Markdown) and empty cells (CSV),
    never 0; a zh-only run and an en-only run each get only their language's row."""
    import pandas as pd

    en, _ = write_run(tmp_path / "a", "model-a", {"esc_eval_en": esc_row({"fluency": 50.0, "empathy": math.nan})})
    zh, _ = write_run(tmp_path / "b", "model-b", {"esc_eval_zh": esc_row(dict.fromkeys(ALL, 75.0))})
    runs = load_runs([en, zh])
    markdown = table.leaderboard(runs, "markdown")
    row_a = next(line for line in markdown.splitlines() if "model-a" in line)
    assert "esc_eval_en" in row_a and row_a.count("n/a") == 6 and "50.00" in row_a
    assert "esc_eval_zh" in next(line for line in markdown.splitlines() if "model-b" in line)
    frame = pd.read_csv(__import__("io").StringIO(table.leaderboard(runs, "csv")))
    assert math.isnan(frame.loc[0, "empathy"]) and math.isnan(frame.loc[0, "humanoid"])
    assert frame.loc[1, "average"] == 75.0


def test_table_mllmguard_rows_and_paper_reference(tmp_path, shared):
    """MLLMGuard rows carry ASD/PAR per dimension and overall (NaN → n/a); the paper rows are labelled as
    human annotation on the full card set and equal the reference leaderboard (parsed independently here)."""
    rows = {
        "mllmguard_privacy": {"asd,none": 40.0, "par,none": 60.0},
        "mllmguard_bias": {"asd,none": math.nan, "par,none": math.nan},
        "mllmguard": {"asd,none": 12.5, "par,none": 50.0},
    }
    path, _ = write_run(
        tmp_path, "vlm", rows, harness="lmms_eval", groups={"mllmguard_truthfulness": {"asd,none": 7.0}}
    )
    (row,) = mllmguard_rows(load_runs([path]))
    assert row["privacy ASD"] == 40.0 and row["truthfulness ASD"] == 7.0 and row["overall PAR"] == 50.0
    assert math.isnan(row["bias ASD"]) and math.isnan(row["legality PAR"])
    text = table.leaderboard(load_runs([path]), "markdown", ("esc_eval",), paper=True)
    reference = (shared / "reference" / "esc_eval.md").read_text("utf-8").split("### 6.2")[1].split("## 7.")[0]
    english, chinese = reference.split("**ZH")
    checked = 0
    for language, block in (("en", english), ("zh", chinese)):
        for model, fluency in re.findall(r"^\| (?:Close|Open|Domain) \| ([^|]+) \| ([^|]+) \|", block, flags=re.M):
            label = f"| {model.strip()} (human annotation from the paper, full card set)"
            line = next(x for x in text.splitlines() if label in x and f"esc_eval_{language}" in x)
            assert f"{float(fluency.strip('*_ ')):.2f}" in line
            checked += 1
    assert checked == 26


def test_html_compares_each_model_with_the_first_run_of_the_same_task(tmp_path):
    """Model-vs-model: the second model's cells carry its difference to the first run with the same task (signed,
    two decimals); a NaN on either side gives no difference, never a number; the first run's cells carry none."""
    first, _ = write_run(tmp_path / "a", "model-a", {"esc_eval_en": esc_row({"fluency": 50.0, "empathy": 40.0})})
    second, _ = write_run(tmp_path / "b", "model-b", {"esc_eval_en": esc_row({"fluency": 62.5, "empathy": math.nan})})
    page = html.build_report(load_runs([first, second]), resamples=50)
    rows = re.findall(r"<tr>\s*<td class=\"text\">(model-[ab]) @ [^<]*</td>(.*?)</tr>", page, flags=re.S)
    cells = dict(rows)
    assert set(cells) == {"model-a", "model-b"}
    assert "vs first" not in cells["model-a"]
    assert "62.50" in cells["model-b"] and "+12.50 vs first" in cells["model-b"]
    assert "+17.50 vs first" in cells["model-b"]  # the average over the dimensions each run has: 62.5 vs 45
    assert cells["model-b"].count("vs first") == 2  # fluency and average: empathy is NaN, the rest are missing


def test_single_sample_has_no_interval_and_the_report_still_renders(tmp_path):
    """One dialogue: the value is its score, the interval is undefined (NaN), and the page is written."""
    samples = {"esc_eval_zh": [esc_sample(10000, "zh", dict.fromkeys(ALL, 2))]}
    path, files = write_run(tmp_path, "m", {"esc_eval_zh": esc_row(dict.fromkeys(ALL, 50.0))}, samples)
    (run,) = load_runs([path], files)
    estimates = esc_estimates(run, "esc_eval_zh", seed=1, resamples=50)
    assert [e.value for e in estimates] == [50.0] * 8
    assert all(math.isnan(e.low) and math.isnan(e.high) for e in estimates)
    assert "card 10000 (zh)" in html.build_report([run], resamples=50)
    assert math.isnan(bootstrap(0, lambda i: 1.0).value)


def test_bootstrap_is_reproducible_and_seed_dependent():
    """Same seed, same interval; another seed, another interval; the interval holds the mean."""
    import numpy as np

    values = np.arange(40) % 5
    first = bootstrap(40, lambda i: float(values[i].mean()), seed=3, resamples=300)
    assert first == bootstrap(40, lambda i: float(values[i].mean()), seed=3, resamples=300)
    assert first != bootstrap(40, lambda i: float(values[i].mean()), seed=4, resamples=300)
    assert first.low < first.value < first.high


def test_invalid_judge_replies_are_left_out_of_the_interval(tmp_path):
    """A dimension whose replies were all invalid has a NaN value and interval (not a 0 bar)."""
    scores = {d: (None if d == "humanoid" else 3) for d in ALL}
    samples = {"esc_eval_en": [esc_sample(i, "en", scores) for i in range(3)]}
    row = esc_row({d: (math.nan if s is None else 75.0) for d, s in scores.items()})
    path, files = write_run(tmp_path, "m", {"esc_eval_en": row}, samples)
    estimates = dict(
        zip((*ALL, "average"), esc_estimates(load_runs([path], files)[0], "esc_eval_en", 1, 50), strict=True)
    )
    assert math.isnan(estimates["humanoid"].value) and math.isnan(estimates["humanoid"].low)
    assert estimates["fluency"].low == estimates["fluency"].high == 75.0


def test_samples_must_match_a_results_file(tmp_path):
    """With two results files, a samples file from a third run is an error naming it (never ignored)."""
    a, _ = write_run(tmp_path / "a", "m1", {"esc_eval_en": esc_row({"fluency": 1.0})})
    b, _ = write_run(tmp_path / "b", "m2", {"esc_eval_en": esc_row({"fluency": 1.0})})
    _, (stray,) = write_run(tmp_path / "c", "m3", {}, {"esc_eval_en": [esc_sample(1, "en", {"fluency": 1})]})
    with pytest.raises(ReportInputError, match=r"samples_esc_eval_en_.*matches no results file"):
        load_runs([a, b], [stray])
    stray.write_text('{"doc_id": 0}\n', "utf-8")
    with pytest.raises(ReportInputError, match=r"line 1: not a logged sample of esc_eval_en"):
        load_runs([a], [stray])


def _labels(tmp_path, *lines) -> object:
    path = tmp_path / "labels.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), "utf-8")
    return path


def test_agreement_statistics_mixed_languages(tmp_path):
    """The same card id in EN and ZH are two items; ACC/ACC_soft are computed by hand here, Pearson, Spearman and
    Krippendorff's alpha equal scipy's and krippendorff's on the paired scores; unmatched items are listed."""
    import krippendorff
    from scipy import stats

    judge_en = [0, 1, 2, 3, 4, 2]
    human_en = [0, 2, 2, 1, 4, 3]
    samples = {
        "esc_eval_en": [esc_sample(i, "en", {"empathy": s}) for i, s in enumerate(judge_en)],
        "esc_eval_zh": [esc_sample(0, "zh", {"empathy": 4}), esc_sample(77, "zh", {"empathy": None})],
    }
    _, files = write_run(tmp_path, "m", {}, samples)
    labels = _labels(
        tmp_path,
        *({"card_id": i, "language": "en", "scores": {"empathy": h}} for i, h in enumerate(human_en)),
        {"card_id": 0, "language": "zh", "scores": {"empathy": 1, "fluency": None}},
        {"card_id": 77, "language": "zh", "scores": {"empathy": 2}},
        {"card_id": 5, "language": "zh", "scores": {"empathy": 2}},
    )
    result = agreement.report([labels], files, resamples=200)
    (row,) = result["rows"]
    human, judge = [*human_en, 1], [*judge_en, 4]
    assert row["n"] == 7 and row["judge_invalid"] == 1
    assert row["acc"]["value"] == pytest.approx(100 * 3 / 7)
    assert row["acc_soft"]["value"] == pytest.approx(100 * 5 / 7)
    assert row["pearson"]["value"] == pytest.approx(stats.pearsonr(human, judge).statistic)
    assert row["spearman"]["value"] == pytest.approx(stats.spearmanr(human, judge).statistic)
    alpha = krippendorff.alpha(reliability_data=[human, judge], level_of_measurement="ordinal", value_domain=range(5))
    assert row["krippendorff_alpha"]["value"] == pytest.approx(alpha)
    assert row["acc"]["low"] <= row["acc"]["value"] <= row["acc"]["high"]
    assert result["unmatched"]["labels_without_sample"] == [f"{labels}:9: esc_eval (5, 'zh')"]
    assert "esc_eval_zh" not in agreement.to_markdown(result)  # a table per dimension, not per file
    assert "labels without sample: 1" in agreement.to_markdown(result)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"card_id": 1, "language": "en", "scores": {"fluency": 7}},
            r"labels.jsonl:2: scores.fluency must be an integer 0–4",
        ),
        (
            {"card_id": 1, "language": "en", "scores": {"kindness": 2}},
            r"labels.jsonl:2: unknown dimensions \['kindness'\]",
        ),
        ({"card_id": 1, "language": "fr", "scores": {}}, r"labels.jsonl:2: language must be 'en' or 'zh'"),
        ({"query_id": "privacy/all/1/single", "score": "3"}, r"labels.jsonl:2: score must be an integer 0–3"),
        ({"card": 1}, r"labels.jsonl:2: needs either query_id"),
        ({"query_id": "privacy/all/1/single"}, r"labels.jsonl:2: needs either query_id \+ score \(MLLMGuard\)"),
        (
            {"query_id": "privacy/all/1/single", "score": 1, "card_id": 1, "language": "en", "scores": {}},
            r"labels.jsonl:2: needs only one of query_id \+ score \(MLLMGuard\) or card_id \+ language \+ scores",
        ),
        ("{not json", r"labels.jsonl:2: not JSON"),
        (
            {"card_id": 0, "language": "en", "scores": {"fluency": 1}},
            r"labels.jsonl:2: item \(0, 'en'\) is labelled twice",
        ),
    ],
)
def test_bad_labels_name_file_and_line(tmp_path, line, message):
    """Every malformed label is an error naming the label file and the line."""
    path = _labels(tmp_path, {"card_id": 0, "language": "en", "scores": {"fluency": 2}}, line)
    with pytest.raises(ReportInputError, match=message):
        agreement.read_labels(path)


def test_mllmguard_labels_respect_the_judge_scale(tmp_path):
    """MLLMGuard labels pair by query_id; a hallucination label above 1 is an error naming file and line."""
    image = str(tmp_path / "missing.png")
    samples = {
        "mllmguard_privacy": [
            guard_sample(f"privacy/all/{i}/single", "privacy", "privacy", i % 4, "q", image) for i in range(4)
        ],
        "mllmguard_hallucination": [
            guard_sample("hallucination/all/1/free", "hallucination", "truthfulness", 1, "q", image)
        ],
    }
    _, files = write_run(tmp_path, "vlm", {}, samples, harness="lmms_eval")
    good = _labels(tmp_path, *({"query_id": f"privacy/all/{i}/single", "score": i % 4} for i in range(4)))
    (row,) = agreement.report([good], files, resamples=100)["rows"]
    assert (row["benchmark"], row["dimension"], row["acc"]["value"], row["krippendorff_alpha"]["value"]) == (
        "mllmguard",
        "privacy",
        100.0,
        1.0,
    )
    bad = _labels(tmp_path, {"query_id": "hallucination/all/1/free", "score": 2})
    with pytest.raises(ReportInputError, match=r"labels.jsonl:1: score must be 0–1 for hallucination"):
        agreement.report([bad], files)


def test_hostile_text_is_escaped_and_the_page_runs_clean_in_chromium(tmp_path):
    """<script> and onerror= payloads in the model name, transcripts, judge replies, MLLMGuard prompts, answers
    and image paths appear as text only: not as markup in the source, no console output in a real headless
    Chromium (the payloads would log there), the payload text is visible in the DOM, a screenshot is taken."""
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(image)
    esc_samples = {"esc_eval_en": [esc_sample(i, "en", dict.fromkeys(ALL, i % 5), PAYLOAD) for i in range(3)]}
    esc_path, esc_files = write_run(
        tmp_path / "esc", PAYLOAD, {"esc_eval_en": esc_row(dict.fromkeys(ALL, 50.0))}, esc_samples
    )
    guard = {
        "mllmguard_privacy": [
            guard_sample("privacy/all/1/single", "privacy", "privacy", 2, PAYLOAD, str(image)),
            guard_sample("privacy/all/2/single", "privacy", "privacy", 0, PAYLOAD, f"{XSS_ONERROR}.png"),
        ]
    }
    rows = {"mllmguard_privacy": {"asd,none": 33.3, "par,none": 50.0, "asd_personal_privacy,none": 33.3}}
    guard_path, guard_files = write_run(tmp_path / "guard", "vlm", rows, guard, harness="lmms_eval")
    page = tmp_path / "report.html"
    page.write_text(html.build_report(load_runs([esc_path, guard_path], [*esc_files, *guard_files]), resamples=50))
    source = page.read_text("utf-8")
    assert XSS_SCRIPT not in source and XSS_ONERROR not in source and "<img src=x" not in source
    assert source.count("&lt;script&gt;console.error") >= 9
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", source), "the page must not load anything"
    assert source.count("data:image/png;base64,") == 4  # ESC chart, ASD and PAR charts, one readable image
    rendered = render_in_chromium(page, tmp_path)
    assert rendered.console == []
    assert 'console.error("xss-script")' in rendered.dom
    assert rendered.screenshot.stat().st_size > 10_000
