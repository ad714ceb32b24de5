"""MLLMGuard through lmms-eval's own model classes: the same prompts, images and settings as ``hf_image_text``.

Run in the lmms-eval venv (``scripts/setup_lmms.sh``)::

    .venv-lmms/bin/pytest -m lmms tests/test_lmms_models.py

Users run MLLMGuard with the lmms-eval model class they use for every other task, so these tests run
``--tasks mllmguard_privacy,mllmguard_position_swapping`` (an open dimension and a paired truthfulness task:
two images per item) through lmms-eval's own command (``lmms_eval.cli.dispatch:main``, what ``lmms-eval``
runs) with ``hf_image_text`` and with lmms-eval 0.7's ``llava_hf``, ``huggingface`` and ``openai`` models,
on the same tiny random LLaVA (``tests/test_lmms_eval.py``) and the same tiny data (every image a different
colour, so each query is told apart by its prompt and its image). ``tests/lmms_spy.py`` records what each
local model is given (chat-template conversation and text, processor inputs, ``generate`` arguments and
effective decoding settings, new tokens); the loopback server (``tests/loopback_server.py``) records what
``openai`` sends; a second server that always fails shows what ``openai`` makes of a failed request.
``qwen2_5_vl`` and ``vllm`` are not tested here: see the task README ("Which lmms-eval model").
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lmms,
    pytest.mark.skipif(
        importlib.util.find_spec("lmms_eval") is None,
        reason="lmms-eval is not installed here: run scripts/setup_lmms.sh, then "
        ".venv-lmms/bin/pytest -m lmms tests/test_lmms_models.py",
    ),
]

SPY = Path(__file__).with_name("lmms_spy.py")
CONFIGS = ("privacy", "position-swapping")
TASKS = tuple("mllmguard_" + config.replace("-", "_") for config in CONFIGS)
# the task YAMLs' generation_kwargs (the reference's protocol): greedy, one beam, 128 new tokens
TASK_DECODING = {"max_new_tokens": 128, "do_sample": False, "num_beams": 1}
OPENAI_MODEL = "loopback-vlm"
AUDIOS_ERROR = "ValueError: You passed keyword argument `audios` which is deprecated. Please use `audio` instead."

Query = tuple[str, str]  # (the prompt text of the user turn, the SHA-256 of its image's RGB pixels)


@dataclass
class Call:
    """What one local model was given for one query."""

    conversation: list[Any]  # roles and content parts, images as fingerprints
    prompt: str  # the chat template's output
    images: list[dict[str, Any]]  # the processor's images
    input_ids: list[int]
    pixel_values: dict[str, Any]
    effective: dict[str, Any]  # decoding settings generate() ran with
    new_tokens: list[int]


@dataclass
class ModelRun:
    returncode: int
    output: str
    records: list[dict[str, Any]]
    samples: dict[str, list[dict[str, Any]]]
    results: dict[str, Any] | None

    def calls(self) -> dict[Query, Call]:
        """The spy's records grouped per query (one chat template, one processor and one generate call each)."""
        calls: dict[Query, Call] = {}
        pending: list[dict[str, Any]] = []
        for record in self.records:
            if record["event"] != "generate":
                pending.append(record)
                continue
            template, processor = pending
            assert (template["event"], processor["event"]) == ("chat_template", "processor"), pending
            assert processor["text"] == [template["text"]] and len(record["rows"]) == 1
            query = query_of(template["conversation"])
            assert query not in calls, f"query given twice: {query}"
            row = record["rows"][0]
            calls[query] = Call(
                template["conversation"],
                template["text"],
                processor["images"],
                row["input_ids"],
                record["pixel_values"],
                record["effective"],
                row["new_tokens"],
            )
            pending = []
        assert not pending, pending
        return calls

    def answers(self) -> dict[tuple[str, int], str]:
        return {(task, s["doc_id"]): s["filtered_resps"] for task, rows in self.samples.items() for s in rows}


def normalized(conversation: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Roles and content parts in order: ("text", text) or ("image", SHA-256 of its RGB pixels).

    hf_image_text passes transformers-style messages (``{"type": "image", "image": …}``), llava_hf lmms-eval's
    own (``{"type": "image", "url": …}``): the same content under another key.
    """
    turns = []
    for turn in conversation:
        parts = []
        for part in turn["content"]:
            if part["type"] == "text":
                parts.append(("text", part["text"]))
            else:
                assert part["type"] == "image", part
                parts.append(("image", (part.get("image") or part["url"])["image"]["sha256"]))
        turns.append((turn["role"], parts))
    return turns


def query_of(conversation: list[dict[str, Any]]) -> Query:
    """(prompt text, image SHA-256) of a one-turn, one-image conversation as the spy records it."""
    ((_, parts),) = normalized(conversation)
    (text,) = [value for kind, value in parts if kind == "text"]
    (image,) = [value for kind, value in parts if kind == "image"]
    return text, image


def expected_query_count() -> int:
    from mllmguard_fixtures import expected_queries

    return sum(expected_queries(config, "all") for config in CONFIGS)


# ---------------------------------------------------------------------------------------------- running


def start_cli(work: Path, data: Path, model: str, model_args: str, **env: str) -> tuple[subprocess.Popen, Path]:
    """`lmms-eval --model MODEL --tasks …` on the two tasks, with the spy, in its own process (not waited for)."""
    from test_lmms_eval import offline_env

    work.mkdir(parents=True)
    spy_out = work / "spy.jsonl"
    args = [
        *("--model", model, "--model_args", model_args, "--tasks", ",".join(TASKS), "--batch_size", "1"),
        *("--output_path", str(work / "out"), "--log_samples", "--verbosity", "DEBUG"),
    ]
    environ = offline_env(data, work, **env)
    environ.pop("OPENAI_API_KEY", None)
    log = open(work / "log.txt", "w", encoding="utf-8")  # the child keeps its own copy of the descriptor
    process = subprocess.Popen(
        [sys.executable, str(SPY), str(spy_out), *args], stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=work
    )
    log.close()
    return process, work


def finish_cli(started: tuple[subprocess.Popen, Path]) -> ModelRun:
    from lmms_spy import read_records

    process, work = started
    returncode = process.wait(timeout=900)
    results_files = sorted((work / "out").glob("**/*_results.json"))
    samples = {}
    for path in sorted((work / "out").glob("**/*_samples_*.jsonl")):
        samples[path.stem.split("_samples_", 1)[1]] = [
            json.loads(line) for line in path.read_text("utf-8").splitlines()
        ]
    results = json.loads(results_files[0].read_text("utf-8")) if results_files else None
    output = (work / "log.txt").read_text("utf-8", errors="replace")
    return ModelRun(returncode, output, read_records(work / "spy.jsonl"), samples, results)


def assert_completed(run: ModelRun) -> None:
    assert run.returncode == 0 and run.results is not None, run.output[-6000:]
    assert set(run.samples) == set(TASKS)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    from test_lmms_eval import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The fixture's privacy and position-swapping folders, every image redrawn in its own colour."""
    from mllmguard_fixtures import build_mllmguard_tree, make_image

    root = build_mllmguard_tree(tmp_path_factory.mktemp("mllmguard"), configs=CONFIGS)
    for index, path in enumerate(sorted(root.glob("desensitize/*/imgs/*"))):
        make_image(path, color=(25 * index % 256, 255 - 25 * index % 256, 90))
    return root


@dataclass
class Runs:
    """Every run by name; ``bodies``/``errors``: what the answering loopback server received, and its errors."""

    models: dict[str, ModelRun]
    bodies: list[dict[str, Any]]
    errors: list[BaseException]


@pytest.fixture(scope="module")
def runs(tiny_llava, data, tmp_path_factory) -> Runs:
    """hf_image_text, llava_hf, huggingface and openai on the same model and data, run side by side, and
    openai once more against a server that answers every request with HTTP 500.

    The loopback server answers each `openai` query with what the tiny LLaVA answered it under hf_image_text
    (looked up by prompt text and image pixels): its replies wait until that run has finished.
    """
    from loopback_server import LoopbackChatServer, LoopbackHTTPError
    from transformers import AutoTokenizer

    answers: dict[Query, str] = {}
    ready = threading.Event()

    def reply(body: dict[str, Any]) -> str:
        if not ready.wait(timeout=900):
            raise RuntimeError("the hf_image_text run did not finish")
        return answers[openai_query(body)]

    def fail(body: dict[str, Any]) -> str:
        raise LoopbackHTTPError(500, "the server is down")

    work = tmp_path_factory.mktemp("runs")
    with LoopbackChatServer(reply) as server, LoopbackChatServer(fail) as failing:
        api = f"model={OPENAI_MODEL},api_key=loopback,max_retries=1,retry_backoff_s=0,timeout=900,base_url="
        model_args = {  # run name: (--model, --model_args)
            "hf_image_text": ("hf_image_text", f"pretrained={tiny_llava},device=cpu,dtype=float32"),
            "llava_hf": ("llava_hf", f"pretrained={tiny_llava},device=cpu,device_map=cpu,dtype=float32"),
            "huggingface": ("huggingface", f"pretrained={tiny_llava},device=cpu,device_map=cpu"),
            "openai": ("openai", api + server.base_url),
            "openai_failing": ("openai", api + failing.base_url),
        }
        loopback = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        started = {name: start_cli(work / name, data, *model, **loopback) for name, model in model_args.items()}
        models = {"hf_image_text": finish_cli(started.pop("hf_image_text"))}
        try:
            tokenizer = AutoTokenizer.from_pretrained(tiny_llava)
            for query, call in models["hf_image_text"].calls().items():
                answers[query] = tokenizer.decode(call.new_tokens, skip_special_tokens=True)
        finally:
            ready.set()  # a failed reference run fails the tests that use it, not the others' wait
        models.update({name: finish_cli(process) for name, process in started.items()})
        return Runs(models, server.chat_bodies(), server.errors)


@pytest.fixture(scope="module")
def reference(runs) -> dict[Query, Call]:
    run = runs.models["hf_image_text"]
    assert_completed(run)
    calls = run.calls()
    assert len(calls) == expected_query_count()
    return calls


def openai_query(body: dict[str, Any]) -> Query:
    """(prompt text, image SHA-256) of a chat-completions body with one user turn: a base64 PNG, then text."""
    from lmms_spy import image_fingerprint
    from PIL import Image

    (message,) = body["messages"]
    image_part, text_part = message["content"]
    header, encoded = image_part["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64", header  # lossless: the pixels are the ones the local models got
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return text_part["text"], image_fingerprint(image)["sha256"]


def _rows(run: ModelRun) -> dict[str, dict[str, Any]]:
    assert run.results is not None
    return {
        task: {k: v for k, v in run.results["results"][task].items() if k.startswith(("asd", "par", "judge", "skip"))}
        for task in TASKS
    }


def _same_rows(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> bool:
    def same(x: Any, y: Any) -> bool:
        both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
        return both_nan or x == y

    return a.keys() == b.keys() and all(
        a[t].keys() == b[t].keys() and all(same(a[t][k], b[t][k]) for k in a[t]) for t in a
    )


# ---------------------------------------------------------------------------------------------- tests


def test_hf_image_text_runs_the_task_protocol(reference):
    """The baseline every other model is compared with: each query is one user turn holding its image, then
    the raw prompt (no system turn), decoded greedily with one beam and 128 new tokens, as the task says."""
    for (text, image_sha), call in reference.items():
        assert normalized(call.conversation) == [("user", [("image", image_sha), ("text", text)])]
        assert [image["sha256"] for image in call.images] == [image_sha] and text in call.prompt
        assert {k: call.effective[k] for k in TASK_DECODING} == TASK_DECODING
        assert len(call.new_tokens) == TASK_DECODING["max_new_tokens"]  # the tiny model never stops early


def test_llava_hf_is_given_what_hf_image_text_is_given(runs, reference):
    """lmms-eval's `llava_hf` (batch size 1, device_map=cpu) on the same checkpoint: for every query the same
    conversation, chat-template text, image pixels, input ids, pixel values and effective decoding settings as
    hf_image_text, hence the same new tokens; every sample's answer and every ASD/PAR row are identical."""
    run = runs.models["llava_hf"]
    assert_completed(run)
    calls = run.calls()
    assert calls.keys() == reference.keys()
    for query, call in calls.items():
        expected = reference[query]
        assert normalized(call.conversation) == normalized(expected.conversation)
        assert call.prompt == expected.prompt, query
        assert call.images == expected.images, query
        assert call.input_ids == expected.input_ids, query
        assert call.pixel_values == expected.pixel_values, query
        assert {k: call.effective[k] for k in TASK_DECODING} == TASK_DECODING
        assert call.new_tokens == expected.new_tokens, query
    assert run.answers() == runs.models["hf_image_text"].answers()
    assert _same_rows(_rows(run), _rows(runs.models["hf_image_text"]))


def test_huggingface_model_fails_at_its_first_processor_call(runs, reference):
    """lmms-eval 0.7's generic `huggingface` model builds the first query exactly as hf_image_text does
    (conversation, chat-template text, image) and then fails under transformers 5: it passes `audios=` to the
    processor, which transformers 5 rejects. The run stops there (no generate call, no results): the task
    README names this error so users pick a model that works."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"documents the transformers 5 failure; this is transformers {transformers.__version__}")
    run = runs.models["huggingface"]
    assert run.returncode != 0 and run.results is None, run.output[-4000:]
    assert AUDIOS_ERROR in run.output, run.output[-4000:]
    template, processor = run.records
    assert (template["event"], processor["event"]) == ("chat_template", "processor")
    assert "audios" in processor["other_kwargs"]
    expected = reference[query_of(template["conversation"])]
    assert template["text"] == expected.prompt and processor["text"] == [expected.prompt]
    assert processor["images"] == expected.images


def test_openai_model_sends_what_hf_image_text_is_given(runs, reference):
    """lmms-eval's `openai` model (OpenAI-compatible API) against the loopback server: one request per query,
    each with the named model, one user message (no system message) holding the image as a lossless PNG with
    the same pixels hf_image_text got, then the same prompt text; max_tokens is hf_image_text's max_new_tokens
    and temperature 0 (greedy), nothing else. With the server answering as the tiny model did, every sample's
    answer and every ASD/PAR row equal hf_image_text's."""
    run = runs.models["openai"]
    assert_completed(run)
    assert runs.errors == [] and run.records == []  # no local model ran
    queries = [openai_query(body) for body in runs.bodies]
    assert sorted(queries) == sorted(reference)  # every query exactly once
    for body, query in zip(runs.bodies, queries, strict=True):
        expected = reference[query]
        assert {k: v for k, v in body.items() if k != "messages"} == {
            "model": OPENAI_MODEL,
            "max_tokens": expected.effective["max_new_tokens"],
            "temperature": 0,
        }
        # the same turn as hf_image_text's: the user's image, then the prompt (openai_query checked the values)
        assert normalized(expected.conversation) == [("user", [("image", query[1]), ("text", query[0])])]
        assert [(m["role"], [p["type"] for p in m["content"]]) for m in body["messages"]] == [
            ("user", ["image_url", "text"])
        ]
        assert not expected.effective["do_sample"]
    assert run.answers() == runs.models["hf_image_text"].answers()
    assert _same_rows(_rows(run), _rows(runs.models["hf_image_text"]))


def test_openai_model_turns_a_failed_request_into_an_answer(runs):
    """lmms-eval's `openai` model, after max_retries failed attempts, returns "[LMMS_EVAL_REQUEST_FAILED after N
    retries] …" as the model's answer, and the task judges it like any answer (the run completes, every query
    of the judged task gets a verdict): the task README tells users of `openai` to search the samples for it."""
    run = runs.models["openai_failing"]
    assert_completed(run)
    answers = run.answers()
    assert len(answers) == expected_query_count()
    assert all(answer.startswith("[LMMS_EVAL_REQUEST_FAILED after 1 retries]") for answer in answers.values())
    assert all(isinstance(sample["judge"]["score"], int) for sample in run.samples["mllmguard_privacy"])
