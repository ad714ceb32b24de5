"""``esc-guard transcripts``: logged dialogues out as structured records or in the reference's result/ layout."""

from __future__ import annotations

import json

import pytest
from harness_runs import run_cli, tiny_args
from report_fixtures import esc_sample

from esc_guard_tasks.cli import main
from esc_guard_tasks.esc_eval.protocol import Transcript


def write_samples(path, lines):
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), "utf-8")
    return path


def test_jsonl_of_a_real_run_has_card_turns_and_no_verdicts(tiny_model, card_dir, tmp_path):
    """Each dialogue of a judge=none lm_eval run becomes one line: its card (id, language, text), the greeting,
    the turns with speakers exactly as logged, and no verdicts."""
    run = run_cli(
        [*tiny_args(tiny_model, data_dir=str(card_dir), limit=1, rounds=1), "--apply_chat_template", "--log_samples"],
        tmp_path / "run",
    )
    samples = sorted(run.output.glob("**/samples_esc_eval_*.jsonl"))
    out = tmp_path / "dialogues.jsonl"
    assert main(["transcripts", *map(str, samples), "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert len(records) == 2
    cards = {lang: json.loads((card_dir / f"card_high_{lang}.json").read_text("utf-8"))[0] for lang in ("en", "zh")}
    for record in records:
        language = record["card"]["language"]
        (logged,) = run.transcripts(record["task"])
        assert record["card"]["id"] == cards[language]["id"] == logged["card_id"]
        assert record["card"]["text"] == cards[language]["base"]
        assert record["greeting"] == logged["greeting"]
        assert record["turns"] == [{"speaker": t["speaker"], "text": t["text"]} for t in logged["turns"]]
        assert record["verdicts"] is None


def test_judged_samples_carry_their_verdicts(tmp_path):
    """A judged sample's verdicts (dimension, score, raw reply; invalid ones as null) are in its record."""
    path = write_samples(
        tmp_path / "samples_esc_eval_en_2026-01-01T00-00-00.jsonl",
        [esc_sample(32025, "en", {"fluency": 3, "empathy": None}, text="I feel alone")],
    )
    assert main(["transcripts", str(path), "--output", str(tmp_path / "out.jsonl")]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text("utf-8").splitlines()]
    assert record["turns"][0] == {"speaker": "seeker", "text": "I feel alone"}
    assert [(v["dimension"], v["score"]) for v in record["verdicts"]] == [("fluency", 3), ("empathy", None)]


def test_reference_layout_round_trips_through_the_reference_parser(tmp_path):
    """--format reference writes <model>_<language>.json as upstream evaluate.py does (doc_id keys, prefixed lines,
    indent 4, no trailing newline), and the reference parser reads back the same dialogues."""
    en = esc_sample(32025, "en", {}, text="hello")
    zh = esc_sample(10000, "zh", {}, text="你好") | {"doc_id": 3}
    paths = [
        write_samples(tmp_path / "samples_esc_eval_en_2026-01-01T00-00-00.jsonl", [en]),
        write_samples(tmp_path / "samples_esc_eval_zh_2026-01-01T00-00-00.jsonl", [zh]),
    ]
    out = tmp_path / "result"
    assert (
        main(["transcripts", *map(str, paths), "--format", "reference", "--model", "tiny", "--output", str(out)]) == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["tiny_en.json", "tiny_zh.json"]
    text = (out / "tiny_zh.json").read_text("utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, ensure_ascii=False, indent=4) and list(data) == ["3"]
    expected = Transcript.from_dict(json.loads(zh["filtered_resps"][0])["transcript"])
    assert Transcript.from_reference_lines(data["3"], 10000, "zh") == expected


def test_bad_input_names_the_file(tmp_path):
    """An MLLMGuard samples file, or two dialogues for the same reference key, stop with the file named."""
    guard = write_samples(
        tmp_path / "samples_mllmguard_privacy_2026-01-01T00-00-00.jsonl", [{"judge": {"query_id": "q"}}]
    )
    with pytest.raises(SystemExit, match="samples_mllmguard_privacy.*MLLMGuard"):
        main(["transcripts", str(guard)])
    one = write_samples(tmp_path / "samples_esc_eval_en_2026-01-01T00-00-00.jsonl", [esc_sample(1, "en", {})])
    two = write_samples(tmp_path / "samples_esc_eval_en_2026-01-02T00-00-00.jsonl", [esc_sample(2, "en", {})])
    with pytest.raises(SystemExit, match="two dialogues with doc_id 0"):
        main(["transcripts", str(one), str(two), "--format", "reference", "--output", str(tmp_path / "r")])
