"""``esc-guard verify esc-rank``: the reference's 12 example dialogues judged through a real run's code path,
compared verdict by verdict with the reference scorer's own 84 ESC-RANK scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from internlm2_fixtures import TinySpec, build_adapter, build_internlm2
from judge_fixtures import ADAPTER_FOLDERS
from loopback_server import LoopbackChatServer

from esc_guard_tasks import cli
from esc_guard_tasks.esc_eval import cards
from esc_guard_tasks.esc_eval.rubric import dimensions, judge_query
from esc_guard_tasks.esc_rank.verify import load_examples

FAST = "retry_backoff=0.01,max_retry_wait=0.05"


@pytest.fixture(scope="module")
def recorded(esc_data: Path) -> dict[tuple[str, str], int]:
    """The reference's score for every (adapter, exact judge query) a served ESC-RANK would be asked."""
    scores = {}
    for example in load_examples(esc_data):
        for d in dimensions():
            query = judge_query(example.transcript, d)
            scores[(d.adapter(example.transcript.language), query)] = example.reference[d.key]
    assert len(scores) == 84
    return scores


def replaying(recorded: dict[tuple[str, str], int], changes: dict[tuple[str, str], str] | None = None):
    """A served ESC-RANK that answers each request with the reference's recorded score (or a planned change)."""

    def reply(body: dict[str, Any]) -> str:
        key = (body["model"], body["messages"][-1]["content"])
        return (changes or {}).get(key, str(recorded[key]))

    return reply


def verify(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["verify", "esc-rank", *args])
    return code, capsys.readouterr().out


def verify_served(capsys, esc_data: Path, server: LoopbackChatServer, *args: str) -> tuple[int, str]:
    """``verify`` of the examples in ``esc_data`` judged by ESC-RANK served at ``server`` (fast retries)."""
    served = ("--judge-backend", "openai", "--judge-args", f"base_url={server.base_url},{FAST}")
    return verify(capsys, "--data-dir", str(esc_data), *served, *args)


def test_a_judge_replaying_the_reference_scores_agrees_84_of_84(esc_data, recorded, capsys):
    """Through the openai backend (the requests a real run sends: adapter as model, exact query), a server that
    replays the reference scorer's recorded scores gives 84/84 exact, every dimension 12/12, each language
    42/42, and exit 0."""
    with LoopbackChatServer(replaying(recorded)) as server:
        code, out = verify_served(capsys, esc_data, server)
        asked = len(server.chat_bodies())
    assert code == 0, out
    assert asked == 84, "the judge cache must be off: every verdict is asked"
    assert "exact agreement: 84/84" in out and "within ±1:       84/84" in out
    assert out.count("12/12 (100.0%)") == 7 and out.count("42/42 (100.0%)") == 2
    assert "disagreements: 0" in out and out.rstrip().splitlines()[-1].startswith("PASS")


def test_a_disagreeing_judge_fails_and_names_each_item(esc_data, recorded, capsys):
    """Three verdicts differ (one off by two, one off by one, one invalid reply): 81/84 is below the default bar,
    exit 1, and each disagreement is listed with file, dialogue, dimension, ours, reference and the raw reply."""
    examples = {(e.file, e.dialogue): e for e in load_examples(esc_data)}
    overall, fluency, humanoid = (next(d for d in dimensions() if d.key == k) for k in ("overall", "fluency", "human"))

    def key(file: str, dialogue: str, d) -> tuple[str, str]:
        transcript = examples[(file, dialogue)].transcript
        return (d.adapter(transcript.language), judge_query(transcript, d))

    changes = {
        key("llama3_zh.json", "2", overall): "4",
        key("Qwen_7B_en.json", "0", fluency): "2",
        key("llama3_en.json", "1", humanoid): "Score: 2",
    }
    with LoopbackChatServer(replaying(recorded, changes)) as server:
        code, out = verify_served(capsys, esc_data, server)
    assert code == 1, out
    assert "exact agreement: 81/84" in out and "within ±1:       82/84" in out and "disagreements: 3" in out
    assert "llama3_zh.json dialogue 2 overall (overall): ours 4, reference 2, raw reply '4'" in out
    assert "Qwen_7B_en.json dialogue 0 fluency (fluency): ours 2, reference 3, raw reply '2'" in out
    assert "llama3_en.json dialogue 1 humanoid (human): ours invalid, reference 2, raw reply 'Score: 2'" in out
    assert out.rstrip().splitlines()[-1].startswith("FAIL")


def test_the_bar_is_the_given_share(esc_data, recorded, capsys):
    """--min-agreement decides the exit code: 81/84 (0.964) passes 0.96 and fails 0.97 (the default)."""
    examples = load_examples(esc_data)
    first = examples[0]
    changes = {
        (d.adapter(first.transcript.language), judge_query(first.transcript, d)): str((first.reference[d.key] + 1) % 5)
        for d in dimensions()[:3]
    }
    with LoopbackChatServer(replaying(recorded, changes)) as server:
        assert verify_served(capsys, esc_data, server, "--min-agreement", "0.96")[0] == 0
        assert verify_served(capsys, esc_data, server)[0] == 1


def test_without_data_dir_or_network_the_error_names_both_options(monkeypatch, capsys):
    """Offline and without --data-dir: a clear error naming --data-dir and the download it tried (the same
    downloader as the role cards, at the pinned commit)."""
    asked: list[tuple[str, str]] = []

    def offline(file_name: str, folder: str = "data") -> Path:
        asked.append((folder, file_name))
        raise cards.CardError("offline")

    monkeypatch.setattr(cards, "fetch_upstream", offline)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["verify", "esc-rank", "--judge-backend", "openai", "--judge-args", "base_url=http://127.0.0.1:9"])
    message = str(exit_info.value)
    assert "--data-dir" in message and "raw.githubusercontent.com" in message and cards.UPSTREAM_COMMIT[:7] in message
    assert asked == [("result/2024-06-24", "Qwen_7B_en.json")]


def test_a_bad_reference_file_is_named_with_its_dialogue(esc_data, tmp_path):
    """A score file that misses a dimension fails naming the file and the dialogue, before any judge loads."""
    copy = tmp_path / "reference"
    shutil.copytree(esc_data / "result", copy / "result")
    shutil.copytree(esc_data / "score", copy / "score")
    path = copy / "score" / "llama3_en.json"
    scores = json.loads(path.read_text("utf-8"))
    del scores["1"]["tech"]
    path.write_text(json.dumps(scores), "utf-8")
    with pytest.raises(SystemExit, match=r"llama3_en\.json: dialogue 1: expected the scores of"):
        cli.main(["verify", "esc-rank", "--data-dir", str(copy)])


@pytest.mark.slow  # 84 judge inputs of ~3,000 tokens through a CPU model: minutes
def test_the_hf_backend_runs_the_converted_checkpoint(esc_data, tmp_path, monkeypatch, capsys):
    """The hf path of a real run: an InternLM2-layout base and 14 fused-wqkv adapters are converted (no remote
    code) and all 84 reference inputs are judged; a random tiny judge agrees by chance only, so the bar is 0."""
    monkeypatch.setenv("ESC_GUARD_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "internlm2-chat-7b"
    config, _ = build_internlm2(base, TinySpec(max_position_embeddings=8192, rope_scaling=None))
    for seed, folder in enumerate(ADAPTER_FOLDERS):
        build_adapter(tmp_path / "ESC-RANK" / folder, base, config, seed=seed)
    # float32: half precision is slow on a CPU (the float16 default is tested in test_judge_dtype.py)
    judge_args = (
        f"pretrained={base},adapters={tmp_path / 'ESC-RANK'},device=cpu,max_new_tokens=1,batch_size=12,dtype=float32"
    )
    code, out = verify(capsys, "--data-dir", str(esc_data), "--judge-args", judge_args, "--min-agreement", "0")
    assert code == 0, out
    assert "exact agreement: " in out and "/84 (" in out and "per language:" in out
    assert '"backend": "hf"' in out and '"dtype": "float32"' in out, "the judge that replied is printed"
