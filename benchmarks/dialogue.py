"""Dialogue generation: the engine (through lm-eval's HFLM, as a real run) vs the reference loop vs raw ``generate``.

* ``engine``: ``DialogueEngine`` with both speakers as ``LMEvalChatModel`` over one ``HFLM`` (what
  ``lm_eval --tasks esc_eval`` runs): ``2 × rounds`` batched ``generate_until`` calls.
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from esc_guard_tasks.esc_eval.engine import DialogueEngine, DialogueSetup
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
    max_new_tokens: int
    batch_size: int


def load_hflm(path: Any, batch_size: int) -> Any:
    """The supporter as ``lm_eval --model hf --model_args pretrained=…`` builds it."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(path), device="cpu", batch_size=batch_size)


def _setups(cards: Sequence[Card]) -> list[DialogueSetup]:
    return [DialogueSetup(card, default_supporter_system_prompt()) for card in cards]


def run_engine(lm: Any, cards: Sequence[Card], settings: DialogueSettings) -> list[Transcript]:
    gen = {"until": [], "max_gen_toks": settings.max_new_tokens, "do_sample": False}
    engine = DialogueEngine(LMEvalChatModel(lm, gen), LMEvalChatModel(lm, gen), settings.rounds)
    return engine.run(_setups(cards))


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
            seeker = _reference_reply(model, tokenizer, role_player_messages(card, transcript), settings.max_new_tokens)
            transcript.turns.append(Turn("seeker", seeker.strip()))
            reply = _reference_reply(model, tokenizer, supporter_messages(system, transcript), settings.max_new_tokens)
            transcript.turns.append(Turn("supporter", reply.strip()))
        transcripts.append(transcript)
    return transcripts


@dataclass
class GenerateCall:
    """One ``model.generate`` call as HFLM made it: its padded inputs and how many tokens it produced."""

    inputs: dict[str, Any]
    new_tokens: int


def run_engine_recorded(lm: Any, cards: Sequence[Card], settings: DialogueSettings):
    """``run_engine``, recording every ``model.generate`` call HFLM makes (inputs and output length)."""
    model = lm.model
    calls: list[GenerateCall] = []
    original = model.generate

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        inputs = {k: kwargs[k] for k in ("input_ids", "attention_mask") if k in kwargs}
        calls.append(GenerateCall(inputs, out.shape[1] - inputs["input_ids"].shape[1]))
        return out

    model.generate = recording  # instance attribute: shadows the method for this run only
    try:
        transcripts = run_engine(lm, cards, settings)
    finally:
        del model.generate
    return transcripts, calls


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
    import time

    import torch

    model = lm.model
    pad = _tokenizer(lm).pad_token_id
    generator = torch.Generator().manual_seed(0)
    out = []
    for length in lengths:
        ids = torch.randint(10, model.config.vocab_size, (rows, length), generator=generator)

        def generate(batch: Any) -> None:
            with torch.inference_mode():
                model.generate(
                    input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=False,
                    min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=pad,
                )  # fmt: skip

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
