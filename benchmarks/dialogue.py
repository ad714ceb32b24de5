"""Dialogue generation: the engine (through lm-eval's HFLM, as a real run) vs the reference loop vs raw ``generate``.

* ``engine``: ``DialogueEngine`` with both speakers as ``LMEvalChatModel`` over one ``HFLM`` and the dialogue
  store on (what ``lm_eval --tasks esc_eval`` runs): ``2 × rounds`` batched ``generate_until`` calls.
* ``sequential``: the reference ``evaluate.py`` loop re-implemented: one dialogue at a time, one turn at a
  time, ``apply_chat_template`` + ``model.generate`` on a single prompt, decode the new tokens. Same model
  object, same prompts (the protocol module), same greedy settings and token budget.
* ``raw``: the limit of this backend: every ``model.generate`` call HFLM made during the engine run is
  recorded (padded input ids, attention mask, number of new tokens) and replayed bare, forced to the same
  number of new tokens: the same prompts, batches and token counts without lm-eval, templating,
  tokenisation, stop-sequence checks or the engine around them.

Both speakers decode greedily here (the reference samples the role-player): the engine and the reference
loop then produce comparable token counts, and their transcripts can be compared turn by turn.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import rounded
from esc_guard_tasks.dialogue.store import SQLiteDialogueStore
from esc_guard_tasks.esc_eval.dialogue import DialogueSetup, EscDialogueEngine
from esc_guard_tasks.esc_eval.protocol import (
    Card,
    Message,
    Transcript,
    Turn,
    default_supporter_system_prompt,
    role_player_messages,
    supporter_messages,
)
from esc_guard_tasks.harness.lm_eval_chat import LMEvalChatModel


@dataclass(frozen=True)
class DialogueSettings:
    rounds: int
    max_new_tokens: int  # per seeker turn, and per supporter turn unless supporter_new_tokens is set
    batch_size: int
    supporter_new_tokens: int | None = None

    def new_tokens(self, speaker: str) -> int:
        if speaker == "supporter" and self.supporter_new_tokens:
            return self.supporter_new_tokens
        return self.max_new_tokens


def load_hflm(path: Any, batch_size: int) -> Any:
    """The supporter as ``lm_eval --model hf --model_args pretrained=…`` builds it."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(path), device="cpu", batch_size=batch_size)


def _setups(cards: Sequence[Card], trials: int = 1) -> list[DialogueSetup]:
    return [DialogueSetup(card, default_supporter_system_prompt(), trial) for card in cards for trial in range(trials)]


def run_engine(lm: Any, cards: Sequence[Card], settings: DialogueSettings, trials: int = 1) -> list[Transcript]:
    """The engine as ``lm_eval --tasks esc_eval`` runs it, the dialogue store on (a fresh SQLite file per run,
    so nothing is resumed); ``trials`` dialogues per card, all in the same batches as the task's ``trials``."""

    def speaker(role: str) -> LMEvalChatModel:
        return LMEvalChatModel(lm, {"until": [], "max_gen_toks": settings.new_tokens(role), "do_sample": False})

    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteDialogueStore(Path(folder) / "dialogues.sqlite")
        engine = EscDialogueEngine(speaker("seeker"), speaker("supporter"), settings.rounds, store=store)
        try:
            return engine.run(_setups(cards, trials))
        finally:
            store.close()


def _tokenizer(lm: Any) -> Any:
    tokenizer = lm.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _reference_reply(model: Any, tokenizer: Any, messages: list[Message], max_new_tokens: int) -> str:
    """One call of the reference wrapper: template, generate on one prompt, decode the new tokens."""
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def run_sequential(lm: Any, cards: Sequence[Card], settings: DialogueSettings) -> list[Transcript]:
    model, tokenizer = lm.model, _tokenizer(lm)
    system = default_supporter_system_prompt()
    transcripts = []
    for card in cards:
        transcript = Transcript.start(card)
        for _ in range(settings.rounds):
            seeker = _reference_reply(
                model, tokenizer, role_player_messages(card, transcript), settings.new_tokens("seeker")
            )
            transcript.turns.append(Turn("seeker", seeker.strip()))
            reply = _reference_reply(
                model, tokenizer, supporter_messages(system, transcript), settings.new_tokens("supporter")
            )
            transcript.turns.append(Turn("supporter", reply.strip()))
        transcripts.append(transcript)
    return transcripts


@dataclass
class GenerateCall:
    """One ``model.generate`` call as HFLM made it: its padded inputs, how many tokens it produced, how long
    it took."""

    inputs: dict[str, Any]
    new_tokens: int
    seconds: float


@dataclass
class EngineRun:
    """A recorded engine run: the transcripts, HFLM's ``generate`` calls and the time inside lm-eval's
    ``generate_until`` (HFLM, the generate calls included)."""

    transcripts: list[Transcript]
    calls: list[GenerateCall]
    harness_s: float


@contextmanager
def _shadowed(obj: Any, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """``obj.<name>`` replaced by ``wrap(original)`` while the block runs: an instance attribute shadowing the
    method, removed afterwards. ``functools.wraps`` keeps the original's signature visible, because callers read
    it (generate() passes ``logits_to_keep=1`` to a forward that declares it); a bare ``(*args, **kwargs)``
    wrapper would change what the model computes."""
    original = getattr(obj, name)
    setattr(obj, name, functools.wraps(original)(wrap(original)))
    try:
        yield
    finally:
        delattr(obj, name)


def run_engine_recorded(lm: Any, cards: Sequence[Card], settings: DialogueSettings, trials: int = 1) -> EngineRun:
    """``run_engine``, recording every ``model.generate`` call HFLM makes and timing ``generate_until``: the
    engine's own time is the total minus ``harness_s``, lm-eval's is ``harness_s`` minus the calls'."""
    run = EngineRun([], [], 0.0)

    def recording(generate: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            out = generate(*args, **kwargs)
            inputs = {k: kwargs[k] for k in ("input_ids", "attention_mask") if k in kwargs}
            new_tokens = out.shape[1] - inputs["input_ids"].shape[1]
            run.calls.append(GenerateCall(inputs, new_tokens, time.perf_counter() - began))
            return out

        return call

    def timed(generate_until: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return generate_until(*args, **kwargs)
            finally:
                run.harness_s += time.perf_counter() - began

        return call

    with _shadowed(lm.model, "generate", recording), _shadowed(lm, "generate_until", timed):
        run.transcripts = run_engine(lm, cards, settings, trials)
    return run


def run_raw(lm: Any, calls: Sequence[GenerateCall]) -> int:
    """Replay the engine's ``generate`` calls bare (same padded prompts, same new-token counts, no stop
    criteria, no lm-eval around them); returns the number of generated token slots."""
    import torch

    model = lm.model
    generated = 0
    for call in calls:
        with torch.inference_mode():
            model.generate(
                **call.inputs,
                do_sample=False,
                min_new_tokens=call.new_tokens,
                max_new_tokens=call.new_tokens,
                pad_token_id=_tokenizer(lm).pad_token_id,
            )
        generated += call.new_tokens * call.inputs["input_ids"].shape[0]
    return generated


@dataclass
class ForwardTimes:
    """Wall time inside the model's forward passes, split into prefill (the prompt) and decode (one token)."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_tokens: int = 0  # prompt positions computed, padding included
    decode_steps: int = 0

    def as_dict(self) -> dict[str, Any]:
        return rounded(self, 3)


@contextmanager
def forward_clock(model: Any) -> Iterator[ForwardTimes]:
    """Time every forward pass of ``model`` while the block runs: a pass over more than one position is a
    prefill, a one-position pass a decode step. Whatever else a run spends (templating, tokenising, the
    generate loop's logits processors, lm-eval) is its total minus these two."""
    times = ForwardTimes()

    def clock(forward: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids") if "input_ids" in kwargs else args[0]
            began = time.perf_counter()
            out = forward(*args, **kwargs)
            elapsed = time.perf_counter() - began
            if ids.shape[1] > 1:
                times.prefill_s += elapsed
                times.prefill_tokens += ids.numel()
            else:
                times.decode_s += elapsed
                times.decode_steps += 1
            return out

        return timed

    with _shadowed(model, "forward", clock):
        yield times


def transcript_chars(transcripts: Sequence[Transcript]) -> int:
    return sum(len(t.greeting) + sum(len(turn.text) for turn in t.turns) for t in transcripts)


def same_turns(a: Sequence[Transcript], b: Sequence[Transcript]) -> float:
    """Share of turns identical in both runs (greedy decoding; batching may flip near-ties)."""
    pairs = [(x.text, y.text) for s, t in zip(a, b, strict=True) for x, y in zip(s.turns, t.turns, strict=True)]
    return sum(x == y for x, y in pairs) / max(1, len(pairs))


def batching_ceiling(lm: Any, lengths: Sequence[int], rows: int, new_tokens: int) -> list[dict[str, Any]]:
    """The most batching can buy on this machine: ``rows`` prompts of ``length`` tokens, each generating exactly
    ``new_tokens``, one ``generate`` call at a time vs one call of ``rows`` rows (no padding, no lm-eval). The
    engine vs sequential speed-up cannot exceed this ratio at the contexts its rounds reach."""
    import torch

    model = lm.model
    pad = _tokenizer(lm).pad_token_id
    generator = torch.Generator().manual_seed(0)

    def generate(batch: Any) -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=False,
                min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=pad,
            )  # fmt: skip

    out = []
    for length in lengths:
        ids = torch.randint(10, model.config.vocab_size, (rows, length), generator=generator)
        began = time.perf_counter()
        for row in ids:
            generate(row[None])
        one_at_a_time = time.perf_counter() - began
        began = time.perf_counter()
        generate(ids)
        batched = time.perf_counter() - began
        out.append(
            {
                "context_tokens": length,
                "rows": rows,
                "new_tokens": new_tokens,
                "one_at_a_time_s": round(one_at_a_time, 3),
                "batched_s": round(batched, 3),
                "ceiling": round(one_at_a_time / batched, 2),
            }
        )
    return out


def _seconds(step: Any, *args: Any, **kwargs: Any) -> float:
    """Wall time of the second of two calls of ``step(*args, **kwargs)`` (the first warms up)."""
    step(*args, **kwargs)
    began = time.perf_counter()
    step(*args, **kwargs)
    return time.perf_counter() - began


def attention_kernels(context: int = 1024, pad: int = 64) -> list[dict[str, Any]]:
    """One prefill's attention under each mask, at the head shapes of the tiny model and of SmolLM2.

    A batch of prompts of unequal length is left-padded for generation, so its prefill needs a padding mask;
    one prompt alone (or a batch of equal lengths) runs the fused causal kernel, which skips the masked half.
    ``per_row`` is the causal kernel one row at a time (what the sequential loop's prefill runs)."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    def per_row(q: Any, k: Any, v: Any) -> None:
        for i in range(q.shape[0]):
            sdpa(q[i : i + 1], k[i : i + 1], v[i : i + 1], is_causal=True)

    generator = torch.Generator().manual_seed(0)
    out = []
    for name, batch, heads, head_dim in (("tiny (4 heads × 16)", 64, 4, 16), ("SmolLM2 (9 heads × 64)", 8, 9, 64)):
        q, k, v = (torch.randn(batch, heads, context, head_dim, generator=generator) for _ in range(3))
        keep = torch.ones(batch, context, dtype=torch.bool)
        keep[1:, :pad] = False  # every row but the longest is left-padded
        mask = torch.ones(context, context, dtype=torch.bool).tril()[None, None] & keep[:, None, None, :]
        causal = _seconds(sdpa, q, k, v, is_causal=True)
        masked = _seconds(sdpa, q, k, v, attn_mask=mask)
        out.append(
            {
                "shape": name,
                "batch": batch,
                "context": context,
                "causal_s": round(causal, 4),
                "padding_mask_s": round(masked, 4),
                "per_row_causal_s": round(_seconds(per_row, q, k, v), 4),
                "mask_penalty": round(masked / causal, 2),
            }
        )
    return out
