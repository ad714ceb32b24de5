"""InternLM2's SentencePiece tokenizer as a stock ``tokenizer.json``, verified against SentencePiece itself.

InternLM2Tokenizer is a SentencePiece BPE model used through remote code. We write a
``tokenizer.json`` (``PreTrainedTokenizerFast``, no ``auto_map``) that mirrors it (BPE with
byte fallback, merges ordered by piece score, dummy prefix per text chunk between special
tokens, special tokens and ids from ``added_tokens_decoder``, BOS added), keep
``tokenizer.model`` and the chat template, and then *verify* the result: every conversion
encodes a probe set (EN/ZH, whitespace runs, emoji, ChatML with special tokens, ESC-Eval's
real judge strings) both with the written folder through ``AutoTokenizer`` and with
SentencePiece itself the way the remote tokenizer (transformers >= 4.34 semantics) does it,
and fails on any difference. Known, unprobed gap: text that literally contains a
SentencePiece *user-defined* piece (InternLM2's ``[UNUSED_TOKEN_n]``) is split there like a
special token, so the text right after it gets a dummy prefix SentencePiece would not add
(only if the model adds one).

Needs ``sentencepiece`` and ``protobuf`` (imported lazily).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, cast

from esc_guard_tasks.esc_eval.protocol import prompts
from esc_guard_tasks.esc_eval.rubric import internlm2_prompt
from esc_guard_tasks.esc_rank.convert.files import (
    ConversionError,
    atomic_dir,
    copy_extras,
    read_json,
    sha256,
    write_json,
)

_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
# Source tokenizer files that are superseded by ours and must not be copied next to them.
SUPERSEDED = (*_TOKENIZER_FILES, "added_tokens.json", "chat_template.jinja")
TOKENIZER_CHECKS = ("strict", "report", "off")
_TOKENIZER_SOURCES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_TOKENIZER_OUTPUTS = (*_TOKENIZER_FILES, "chat_template.jinja")


def check_mode(check: str) -> None:
    """Reject a ``tokenizer_check`` that is not one of :data:`TOKENIZER_CHECKS`, before any work is done."""
    if check not in TOKENIZER_CHECKS:
        raise ValueError(f"tokenizer_check must be one of {TOKENIZER_CHECKS}, got {check!r}")


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


_PROBES = (
    "Hello world! How are you today?",
    "  two leading spaces, trailing two  ",
    "multiple    spaces\tand\ttabs\nnew line\n\nblank line",
    "我最近压力很大，晚上总是睡不着。你能帮帮我吗？",
    "**AI助手**：Hello, I'm your personal assistant.\n\n**用户**Hi there, I really need someone to talk to.",
    "AI \u200b\u200bassistant\u2019s fluecy score: 4",
    "emoji 😀🎉 and symbols ©®™ ½ ① Ⅻ ﬁ",
    "numbers 1234567890 3.14159 -42 1e-5 100%",
    "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ and café naïve",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<s>literal bos</s> and <unk>",
    "line\r\nwindows\u3000ideographic space",
    " ",
    "\n",
    "",
)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [s for item in items for s in _strings(item)]


def _probe_texts() -> list[str]:
    """Built-in probes plus ESC-Eval's real judge strings (rubrics, InternLM2 system prompt, ChatML prompt)."""
    reference = prompts()
    judge = reference["judge"]
    rubrics = [*judge["rubric_prompts"]["en"], *judge["rubric_prompts"]["zh"]]
    closing = judge["closing_template"].format(dimension=judge["dimension_strings"][0])
    user = rubrics[0] + judge["dialogue_header"] + _PROBES[4] + "\n" + closing
    return [
        *_PROBES,
        *rubrics,
        reference["internlm2_meta_instruction"],
        *_strings(reference["role_player_system_prompt"]),
        *_strings(reference["greeting"]),
        internlm2_prompt(user),
    ]


def _load_sp_proto(path: Path) -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as err:
        raise ConversionError(
            f"{path}: converting the tokenizer needs the 'sentencepiece' and 'protobuf' packages ({err}); "
            "pip install sentencepiece protobuf"
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated protobuf module
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ConversionError(f"{path}: not a SentencePiece model ({err})") from None
    return proto


def _added_tokens(src: Path, tok_cfg: dict[str, Any], proto: Any) -> dict[int, dict[str, Any]]:
    """id -> AddedToken fields: SentencePiece control/unk pieces, then ``added_tokens_decoder``."""
    added: dict[int, dict[str, Any]] = {}
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    for index, piece in enumerate(proto.pieces):
        if piece.type in (2, 3):  # UNKNOWN, CONTROL
            added[index] = {"content": piece.piece, **flags, "special": True}
    for key, value in (tok_cfg.get("added_tokens_decoder") or {}).items():
        try:
            index = int(key)
            entry = {**flags, "special": True, **{k: v for k, v in value.items() if k != "__type"}}
        except (TypeError, ValueError, AttributeError):
            raise ConversionError(f"{src / 'tokenizer_config.json'}: bad added_tokens_decoder entry {key!r}") from None
        added[index] = entry
    return added


def _build_tokenizer_json(
    proto: Any,
    added: dict[int, dict[str, Any]],
    add_bos: bool,
    add_eos: bool,
    bos: str | None,
    eos: str | None,
    where: Path,
) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != 2:
        raise ConversionError(f"{where}: SentencePiece model_type {spec.model_type}; InternLM2's is BPE (2)")
    if spec.treat_whitespace_as_suffix:
        raise ConversionError(f"{where}: treat_whitespace_as_suffix is not supported")
    vocab: dict[str, int] = {}
    renamed: set[int] = set()
    for index, piece in enumerate(proto.pieces):
        name = piece.piece
        if index in added and added[index]["content"] != name:
            name = added[index]["content"]
            renamed.add(index)
        if name in vocab:
            raise ConversionError(f"{where}: token {name!r} appears twice (ids {vocab[name]} and {index})")
        vocab[name] = index
    # Merges: every split of a NORMAL piece into two NORMAL pieces, highest piece score first
    # (SentencePiece BPE merges the adjacent pair whose concatenation scores highest).
    normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == 1 and i not in renamed}
    ranked = []
    for piece, index in normal.items():
        score = proto.pieces[index].score
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, index, normal[left], normal[right], left, right))
    ranked.sort()
    unk = proto.pieces[spec.unk_id].piece if 0 <= spec.unk_id < len(proto.pieces) else None
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=[(r[4], r[5]) for r in ranked],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
        )
    )
    steps: list[normalizers.Normalizer] = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex("^ | $"), "")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    decode_steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(decode_steps)
    # Every added token is matched on raw text before normalization, like the remote tokenizer
    # (which splits on them and hands each chunk to SentencePiece, dummy prefix included).
    in_order = sorted(added.items())

    def as_added(e: dict[str, Any]) -> AddedToken:
        return AddedToken(
            e["content"],
            single_word=e["single_word"],
            lstrip=e["lstrip"],
            rstrip=e["rstrip"],
            normalized=False,
            special=e["special"],
        )

    tok.add_special_tokens([as_added(e) for _, e in in_order if e["special"]])
    tok.add_tokens([as_added(e) for _, e in in_order if not e["special"]])
    # SentencePiece matches user-defined pieces atomically; so do non-special added tokens.
    tok.add_tokens(
        [
            AddedToken(p.piece, normalized=False, special=False)
            for i, p in enumerate(proto.pieces)
            if p.type == 4 and i not in added
        ]
    )
    for index, entry in in_order:
        if tok.token_to_id(entry["content"]) != index:
            raise ConversionError(
                f"{where}: added token {entry['content']!r} must have id {index} but would get "
                f"{tok.token_to_id(entry['content'])} (ids beyond the SentencePiece vocab must be contiguous)"
            )
    specials = []
    single, pair = "$A:0", "$A:0 $B:1"
    if add_bos:
        single, pair = f"{bos}:0 {single}", f"{bos}:0 $A:0 {bos}:1 $B:1"
        specials.append((bos, tok.token_to_id(cast(str, bos))))
    if add_eos:
        single = f"{single} {eos}:0"
        pair = pair.replace("$A:0", f"$A:0 {eos}:0").replace("$B:1", f"$B:1 {eos}:1")
        specials.append((eos, tok.token_to_id(cast(str, eos))))
    if any(i is None for _, i in specials):
        raise ConversionError(f"{where}: bos/eos token {specials} not in the vocabulary")
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    return tok


def _reference_encode(sp: Any, text: str, added: dict[str, int], bos_id: int | None) -> list[int]:
    """What the remote InternLM2Tokenizer returns: split on added tokens, SentencePiece per chunk, BOS."""
    ids = [] if bos_id is None else [bos_id]
    if added:
        pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
        pos = 0
        for match in pattern.finditer(text):
            if match.start() > pos:
                ids += sp.encode(text[pos : match.start()])
            ids.append(added[match.group()])
            pos = match.end()
        text = text[pos:]
    if text:
        ids += sp.encode(text)
    return ids


def _verify_tokenizer(out: Path, model: Path, added: dict[int, dict[str, Any]], bos_id: int | None) -> dict[str, Any]:
    """Encode/decode the probes with the written folder (stock AutoTokenizer) and with SentencePiece."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(model))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    by_content = {e["content"]: i for i, e in added.items()}
    specials = set(added)
    mismatches = []
    probes = _probe_texts()
    for text in probes:
        want = _reference_encode(sp, text, by_content, bos_id)
        got = tokenizer(text)["input_ids"]
        if got != want:
            mismatches.append({"text": text, "sentencepiece": want, "converted": got})
            continue
        plain = [i for i in want if i not in specials]
        if not any(t in text for t in by_content) and tokenizer.decode(plain) != sp.decode(plain):
            mismatches.append(
                {"text": text, "decode_sentencepiece": sp.decode(plain), "decode_converted": tokenizer.decode(plain)}
            )
    return {"probes": len(probes), "mismatches": mismatches}


def convert_tokenizer_into(
    src: Path,
    out: Path,
    *,
    check: str,
    vocab_size: int | None,
    cache: dict[str, Any] | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Write the tokenizer of ``src`` into the existing folder ``out``; return its manifest entry.

    ``cache`` (shared by one whole conversion) copies the result for sources whose tokenizer
    files are identical to one already converted (the base and 14 adapters ship the same).
    """
    model = src / "tokenizer.model"
    if not model.is_file():
        raise ConversionError(f"{model}: missing (InternLM2's SentencePiece tokenizer)")
    cache_key = "/".join(sha256(src / n) if (src / n).is_file() else "-" for n in _TOKENIZER_SOURCES)
    if cache is not None and cache_key in cache:
        folder, report, first = cache[cache_key]
        for name in _TOKENIZER_OUTPUTS:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, out / name)
        return {**report, "same_files_as": first}
    cfg_path = src / "tokenizer_config.json"
    tok_cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    map_path = src / "special_tokens_map.json"
    special_map = read_json(map_path) if map_path.is_file() else {}
    proto = _load_sp_proto(model)

    def special(name: str, default: str | None) -> str | None:
        return _token_content(tok_cfg.get(name, special_map.get(name, default)))

    bos, eos = special("bos_token", "<s>"), special("eos_token", "</s>")
    unk, pad = special("unk_token", "<unk>"), special("pad_token", "</s>")
    add_bos, add_eos = bool(tok_cfg.get("add_bos_token", True)), bool(tok_cfg.get("add_eos_token", False))
    added = _added_tokens(src, tok_cfg, proto)
    tok = _build_tokenizer_json(proto, added, add_bos, add_eos, bos, eos, model)
    size = tok.get_vocab_size(with_added_tokens=True)
    if vocab_size is not None and size > vocab_size:
        raise ConversionError(f"{model}: {size} tokens but the model's vocab_size is {vocab_size}")
    tok.save(str(out / "tokenizer.json"))
    shutil.copyfile(model, out / "tokenizer.model")

    extra = [
        _token_content(t)
        for t in tok_cfg.get("additional_special_tokens") or special_map.get("additional_special_tokens") or []
    ]
    new_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": pad,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": tok_cfg.get("clean_up_tokenization_spaces", False),
        "added_tokens_decoder": {str(i): e for i, e in sorted(added.items())},
        "additional_special_tokens": extra,
    }
    for name in ("model_max_length", "padding_side", "chat_template"):
        if name in tok_cfg:
            new_cfg[name] = tok_cfg[name]
    write_json(out / "tokenizer_config.json", new_cfg)
    write_json(
        out / "special_tokens_map.json",
        {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad, "additional_special_tokens": extra},
    )
    if (src / "chat_template.jinja").is_file():
        shutil.copyfile(src / "chat_template.jinja", out / "chat_template.jinja")
    norm = proto.normalizer_spec
    report = {
        "source_sha256": sha256(model),
        "pieces": len(proto.pieces),
        "vocab_with_added": size,
        "add_dummy_prefix": norm.add_dummy_prefix,
        "remove_extra_whitespaces": norm.remove_extra_whitespaces,
        "normalization_rule": norm.name,
        "byte_fallback": proto.trainer_spec.byte_fallback,
        "special_tokens": {e["content"]: i for i, e in sorted(added.items())},
        "chat_template": "chat_template" in tok_cfg or (src / "chat_template.jinja").is_file(),
        "verified": None,
    }
    check_mode(check)
    if check != "off":
        result = _verify_tokenizer(out, model, added, tok.token_to_id(bos) if add_bos else None)
        if result["mismatches"]:
            first = result["mismatches"][0]
            message = (
                f"{model}: the converted tokenizer differs from SentencePiece on {len(result['mismatches'])} of "
                f"{result['probes']} probe texts, e.g. {json.dumps(first, ensure_ascii=False)[:600]}"
            )
            if check == "strict":
                raise ConversionError(message)
            print(f"warning: {message}", file=sys.stderr)
        report["verified"] = result
    if cache is not None:
        cache[cache_key] = (out, report, label)
    return report


def copy_the_rest(src: Path, out: Path, rewritten: set[str]) -> dict[str, list[str]]:
    """The manifest's ``copied`` and ``dropped_files``: the plain files of ``src`` that neither the part's own
    conversion (``rewritten``) nor the tokenizer's (``SUPERSEDED``) wrote, copied or dropped by ``copy_extras``."""
    copied, dropped = copy_extras(src, out, {*rewritten, *SUPERSEDED})
    return {"copied": copied, "dropped_files": dropped}


def convert_tokenizer(src: Path, dst: Path, *, check: str = "strict", overwrite: bool = False) -> dict[str, Any]:
    """Write only the stock-transformers tokenizer of an InternLM2 folder into ``dst``; return the report."""
    with atomic_dir(Path(dst), overwrite) as out:
        return convert_tokenizer_into(Path(src), out, check=check, vocab_size=None)
