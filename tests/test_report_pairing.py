"""`esc-guard report` refuses samples that are not its results file's: another run's, an edited copy, duplicates.

A real lm-eval run (two demo cards, one round, no judge) gives a results file and its samples file; the other
inputs are copies of those, changed the way the issue found them accepted (a dropped line, an edited document,
the same samples twice, another run's samples). Errors are one line naming both files and exit 1 (no
traceback unless ``--debug``); ``--force`` uses mismatched samples with a warning but never duplicates.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness_runs import run_cli, tiny_args
from report_fixtures import esc_row, esc_sample, write_run

from esc_guard_tasks.cli import main
from esc_guard_tasks.report.results import ReportInputError

TASK = "esc_eval_demo_en"


@pytest.fixture(scope="module")
def real_run(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """(results file, samples file) of one lm_eval run with --log_samples."""
    work = tmp_path_factory.mktemp("pairing")
    args = tiny_args(tiny_model, tasks=TASK, limit=2, rounds=1, dialogue_store="none")
    run_cli([*args, "--apply_chat_template", "--log_samples"], work / "out")
    (results,) = (work / "out").glob("**/results_*.json")
    (samples,) = (work / "out").glob(f"**/samples_{TASK}_*.jsonl")
    return results, samples


def edited_copy(samples: Path, folder: Path, edit) -> Path:
    """The samples file copied (same name, so the same date stamp) with its lines passed through ``edit``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.loads(line) for line in samples.read_text("utf-8").splitlines()]
    copy = folder / samples.name
    copy.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in edit(lines)), "utf-8")
    return copy


def report(capsys, *args: str) -> tuple[int, str]:
    code = main(["report", *args])
    return code, capsys.readouterr().err


def test_a_run_pairs_with_its_own_samples(real_run, tmp_path, capsys):
    """The run's own samples pair with its results file: html shows both samples, nothing on stderr."""
    results, samples = real_run
    page = tmp_path / "page.html"
    code, err = report(capsys, "html", str(results), "--samples", str(samples), "--output", str(page))
    assert code == 0 and err == ""
    assert "2 of 2 shown" in page.read_text("utf-8")


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda lines: lines[:1], "1 samples of esc_eval_demo_en, the results were computed on 2"),
        (lambda lines: [lines[0] | {"doc_hash": lines[1]["doc_hash"]}, lines[1]], "the samples' hash is not"),
        (lambda lines: lines[::-1], "the samples' hash is not"),
        (lambda lines: [lines[0], lines[1] | {"doc_id": 10**6}], "line 2: doc_id 1000000 is not one of the task's"),
    ],
    ids=["dropped-line", "edited-document", "reordered", "foreign-doc-id"],
)
def test_edited_copies_are_refused_naming_both_files(real_run, tmp_path, capsys, edit, problem):
    """An edited copy of the run's samples is refused with exit 1, naming the samples and the results file and
    what differs; --force uses it with a warning (the issue's report showed such files as this run's, exit 0)."""
    results, samples = real_run
    copy = edited_copy(samples, tmp_path / "edited", edit)
    page = tmp_path / "page.html"
    code, err = report(capsys, "html", str(results), "--samples", str(copy), "--output", str(page))
    assert code == 1 and not page.exists()
    assert f"{copy} does not match its results file {results}: {problem}" in err
    assert "--force" in err and "Traceback" not in err
    code, err = report(capsys, "html", str(results), "--samples", str(copy), "--output", str(page), "--force")
    assert code == 0 and "warning" in err and page.exists()


def test_another_runs_samples_are_refused(real_run, tmp_path, capsys):
    """Samples of another model's run (another date stamp) do not pair with the results file; before, a single
    results file took every samples file given."""
    results, _ = real_run
    _, (foreign,) = write_run(tmp_path / "other-model", "other", {TASK: esc_row({})}, {TASK: [esc_sample(1, "en", {})]})
    foreign = foreign.rename(foreign.with_name(f"samples_{TASK}_2020-01-01T00-00-00.000000.jsonl"))
    code, err = report(capsys, "html", str(results), "--samples", str(foreign), "--output", str(tmp_path / "p.html"))
    assert code == 1 and f"{foreign}: matches no results file given" in err


def test_duplicates_are_refused_even_with_force(real_run, tmp_path, capsys):
    """The same samples twice (the file given twice, or a copy beside it) and the same results file twice are
    refused, with or without --force: a dialogue counted twice would shift every mean and interval."""
    results, samples = real_run
    copy = tmp_path / "copy" / samples.name
    copy.parent.mkdir()
    shutil.copy(samples, copy)
    for given in ([samples, samples], [samples, copy]):
        code, err = report(capsys, "html", str(results), "--samples", *map(str, given), "--force")
        assert code == 1 and f"appears twice in the samples of {results}" in err
    code, err = report(capsys, "table", str(results), str(results))
    assert code == 1 and "given twice" in err


def test_agreement_checks_pairing_when_given_results(real_run, tmp_path, capsys):
    """report agreement --results applies the same rule to the judged samples."""
    results, samples = real_run
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"card_id": 1, "language": "en", "scores": {"fluency": 2}}) + "\n", "utf-8")
    copy = edited_copy(samples, tmp_path / "edited", lambda lines: lines[:1])
    code, err = report(capsys, "agreement", "--human", str(labels), "--judged", str(copy), "--results", str(results))
    assert code == 1 and f"{copy} does not match its results file {results}" in err


def test_report_errors_are_one_line_and_exit_non_zero(tmp_path):
    """The installed esc-guard prints the message (naming the file) and exits 1 instead of a traceback;
    --debug shows the traceback."""
    bad = tmp_path / "results_x.json"
    bad.write_text("{not json", "utf-8")
    script = Path(sys.executable).parent / "esc-guard"
    plain = subprocess.run([script, "report", "table", str(bad)], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 1
    assert plain.stderr.startswith(f"esc-guard: error: {bad}: not a readable JSON file")
    assert "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1
    with pytest.raises(ReportInputError, match="not a readable JSON file"):
        main(["--debug", "report", "table", str(bad)])


def test_control_characters_are_shown_escaped(tmp_path):
    """Control characters and bidi overrides in model output appear as visible escapes in the page, never raw;
    text around them and HTML escaping stay as they were."""
    text = "bell\x07 esc\x1b[31m nul\x00 rlo\u202eevil <b>"
    results, files = write_run(
        tmp_path, "m", {TASK: esc_row({"fluency": 50.0})}, {TASK: [esc_sample(3, "en", {}, text)]}
    )
    page = tmp_path / "page.html"
    assert main(["report", "html", str(results), "--samples", *map(str, files), "--output", str(page)]) == 0
    html = page.read_text("utf-8")
    assert "bell\\x07 esc\\x1b[31m nul\\x00 rlo\\u202eevil &lt;b&gt;" in html
    assert not any(c in html for c in "\x07\x1b\x00\u202e")
