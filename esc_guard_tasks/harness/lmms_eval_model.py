"""``hf_image_text``: an lmms-eval chat model for any ``AutoModelForImageTextToText`` checkpoint.

lmms-eval 0.7.3's generic ``huggingface`` chat wrapper cannot run image-text models (it falls back to
``AutoModel``, which has no ``generate`` for LLaVA/Qwen-VL, passes ``audios=`` to processors, which
transformers 5 rejects, and moves inputs to ``cuda`` whatever the device). This class is the small
replacement: the checkpoint's ``AutoProcessor`` renders the chat (its own chat template; nothing is
added, no system prompt) and prepares the images, ``AutoModelForImageTextToText.generate`` answers.

Registered through lmms-eval's model entry-point group ``lmms_eval.models``
(:func:`esc_guard_tasks.harness.lmms_eval_discovery.model_manifests`), so after installing this package::

    lmms-eval --model hf_image_text --model_args pretrained=llava-hf/llava-1.5-7b-hf,dtype=bfloat16 \\
        --tasks mllmguard --batch_size 8

``--model_args`` (``k=v,…``):

=====================  ====================================================================================
``pretrained``         hub id or local folder (required)
``revision``           hub revision of the checkpoint (default: the hub's default branch)
``device``             ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (default: ``cuda`` if available,
                       else ``cpu``); lmms-eval's ``--device`` sets the same value
``device_map``         passed to ``from_pretrained`` instead of moving the model to ``device`` (e.g.
                       ``auto`` to shard one large model over several GPUs)
``dtype``              ``auto`` (default: the checkpoint's dtype on GPU, float32 on CPU), ``float32``,
                       ``bfloat16``, ``float16``
``batch_size``         requests per ``generate`` call (default 1; lmms-eval's ``--batch_size``)
``max_new_tokens``     used when a task gives none (default 256)
``chat_template``      a Jinja template (text or path to a file) replacing the checkpoint's
``attn_implementation``, ``use_cache`` (default true); ``trust_remote_code=true`` is refused (no hub code runs)
=====================  ====================================================================================

Generation: greedy unless the task's ``generation_kwargs`` ask for sampling (``do_sample: true`` or a
``temperature`` > 0); ``max_new_tokens`` (or lm-eval's ``max_gen_toks``), ``top_p``, ``top_k``,
``num_beams``, ``repetition_penalty``, ``min_new_tokens``, ``length_penalty`` and
``no_repeat_ngram_size`` are honoured; the answer is cut at the first ``until`` string (after
decoding, so nothing is lost to tokenisation); other keys are ignored with a warning. Requests are
grouped by their generation settings and run ``batch_size`` at a time with left padding; results come
back in request order. Only ``generate_until`` is supported (no log-likelihoods, no multi-round).
One process, one device (or one ``device_map``): no data parallelism.

Errors while generating are raised, never swallowed into an empty answer: an evaluation must not
silently score failures as answers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from loguru import logger as eval_logger
from tqdm import tqdm

from esc_guard_tasks.hub import naming_the_model

MODEL_ID = "hf_image_text"
DEFAULT_MAX_NEW_TOKENS = 256
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
# generation_kwargs passed through to ``generate`` as they are
PASSTHROUGH = ("num_beams", "repetition_penalty", "min_new_tokens", "length_penalty", "no_repeat_ngram_size")
SAMPLING_ONLY = ("temperature", "top_p", "top_k")


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off", "none", ""):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def resolve_device(device: str | None) -> str:
    """``auto``/None → ``cuda`` if available, else ``cpu``; anything else as given."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype | str:
    """``auto`` → float32 on CPU (fast and exact there), the checkpoint's own dtype elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = "auto" if dtype in (None, "") else str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return torch.float32 if device == "cpu" else "auto"
    if name not in DTYPES:
        raise ValueError(f"hf_image_text: unknown dtype {dtype!r}; use auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def generation_options(
    gen_kwargs: dict[str, Any], default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> tuple[dict[str, Any], list[str], list[str]]:
    """A task's ``generation_kwargs`` → (``generate`` keyword arguments, ``until`` strings, ignored keys)."""
    kwargs = dict(gen_kwargs or {})
    until = kwargs.pop("until", None)
    if until is None:
        stops: list[str] = []
    elif isinstance(until, str):
        stops = [until]
    elif isinstance(until, (list, tuple)):
        stops = [str(s) for s in until]
    else:
        raise ValueError(f"generation_kwargs 'until' must be a string or a list of strings, got {until!r}")
    stops = [s for s in stops if s]
    max_new = kwargs.pop("max_new_tokens", None)
    max_gen_toks = kwargs.pop("max_gen_toks", None)
    max_new = max_new if max_new is not None else max_gen_toks
    temperature = float(kwargs.pop("temperature", 0) or 0)
    do_sample = _as_bool(kwargs.pop("do_sample")) if "do_sample" in kwargs else temperature > 0
    options: dict[str, Any] = {
        "max_new_tokens": int(max_new) if max_new is not None else int(default_max_new_tokens),
        "do_sample": do_sample,
    }
    top_p, top_k = kwargs.pop("top_p", None), kwargs.pop("top_k", None)
    if do_sample:
        if temperature > 0:
            options["temperature"] = temperature
        if top_p is not None:
            options["top_p"] = float(top_p)
        if top_k is not None:
            options["top_k"] = int(top_k)
    else:
        # greedy: neutralise sampling settings a checkpoint's generation_config may carry
        options.update(temperature=None, top_p=None, top_k=None)
    for key in PASSTHROUGH:
        if key in kwargs:
            options[key] = kwargs.pop(key)
    return options, stops, sorted(kwargs)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


def _load_template(value: str) -> str:
    path = Path(value).expanduser()
    try:
        if len(value) < 4096 and path.is_file():
            return path.read_text("utf-8")
    except OSError:
        pass
    return value


class HFImageTextModel(lmms):
    """Chat-style lmms-eval model around ``AutoModelForImageTextToText`` + ``AutoProcessor``."""

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        revision: str | None = None,
        device: str | None = None,
        device_map: str | None = None,
        dtype: str | None = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | str | None = None,  # lmms-eval passes it; batches are fixed-size here
        max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS,
        chat_template: str | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool | str = False,
        use_cache: bool | str = True,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"hf_image_text: unknown model_args {', '.join(sorted(unknown))}; accepted: pretrained, revision, "
                "device, device_map, dtype, batch_size, max_new_tokens, chat_template, attn_implementation, "
                "trust_remote_code, use_cache"
            )
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if str(batch_size).startswith("auto"):
            raise ValueError("hf_image_text: batch_size=auto is not supported; pass an integer (--batch_size 8)")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"hf_image_text: batch_size must be >= 1, got {batch_size}")
        self.max_new_tokens = int(max_new_tokens)
        self.use_cache = _as_bool(use_cache)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            eval_logger.warning("hf_image_text runs in one process; it does not split requests across ranks")
        if _as_bool(trust_remote_code):
            raise ValueError(
                "hf_image_text: trust_remote_code=true is refused: this package never runs code from a model hub;"
                " use a checkpoint that stock transformers loads (AutoModelForImageTextToText)"
            )
        load: dict[str, Any] = {"revision": revision, "trust_remote_code": False}
        model_load = dict(load, dtype=self.dtype)
        if attn_implementation:
            model_load["attn_implementation"] = attn_implementation
        if device_map:
            model_load["device_map"] = device_map
        with naming_the_model("hf_image_text model", pretrained, "--model_args pretrained"):
            self.processor = AutoProcessor.from_pretrained(pretrained, **load)
            model: Any = AutoModelForImageTextToText.from_pretrained(pretrained, **model_load)
        if not device_map:
            model = model.to(self.device)
        self.model = model.eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None) or self.processor
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._chat_template = _load_template(chat_template) if chat_template else None
        if self._chat_template is None and not (
            getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        ):
            raise ValueError(
                f"hf_image_text: {pretrained} has no chat template; pass chat_template=<file or Jinja text>"
            )
        self.pretrained = pretrained
        self._warned: set[str] = set()

    # -- lmms-eval interface -----------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        return self._chat_template or getattr(self.processor, "chat_template", None)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("hf_image_text supports generate_until only (no log-likelihood tasks)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("hf_image_text supports single-turn generate_until only")

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answer every request; batches share generation settings; results in request order."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[2], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        results: list[GenerationResult | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="Model Responding")
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[2]
            options, stops, ignored = generation_options(gen_kwargs, self.max_new_tokens)
            for key in ignored:
                if key not in self._warned:
                    self._warned.add(key)
                    eval_logger.warning(f"hf_image_text ignores generation_kwargs '{key}'")
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                answers = self.generate([self._messages(requests[i]) for i in batch], options, stops)
                for i, answer in zip(batch, answers, strict=True):
                    results[i] = answer
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs), answer.text)
                progress.update(len(batch))
        progress.close()
        return results  # type: ignore[return-value]

    def clean(self) -> None:
        """Free the model (lmms-eval calls this before scoring, so a judge can use the memory)."""
        self.processor = None
        self.tokenizer = None
        super().clean()  # deletes nn.Module attributes, collects, empties the CUDA cache

    # -- the model call ------------------------------------------------------------------------------------

    def _messages(self, request: Instance) -> list[dict[str, Any]]:
        _ctx, doc_to_messages, _gen_kwargs, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        return doc_to_messages(doc)

    def render(self, messages: list[dict[str, Any]]) -> tuple[str, list[Any]]:
        """One conversation → (prompt text from the chat template, its images in order)."""
        chat = ChatMessages(messages=messages)
        images, videos, audios = chat.extract_media()
        if videos or audios:
            raise NotImplementedError("hf_image_text accepts text and images only (no video, no audio)")
        from PIL import Image

        loaded = []
        for image in images:
            if isinstance(image, (str, os.PathLike)):
                with Image.open(image) as opened:
                    image = opened.convert("RGB")
            loaded.append(image)
        kwargs = {"chat_template": self._chat_template} if self._chat_template else {}
        text = self.processor.apply_chat_template(
            chat.to_hf_messages(), tokenize=False, add_generation_prompt=True, **kwargs
        )
        return text, loaded

    @torch.inference_mode()
    def generate(
        self, conversations: list[list[dict[str, Any]]], options: dict[str, Any], stops: Sequence[str] = ()
    ) -> list[GenerationResult]:
        """One ``generate`` call for a batch of conversations (left-padded)."""
        rendered = [self.render(messages) for messages in conversations]
        texts = [text for text, _ in rendered]
        images = [imgs for _, imgs in rendered]
        inputs = self.processor(text=texts, images=images if any(images) else None, return_tensors="pt", padding=True)
        inputs.pop("token_type_ids", None)
        device = self.model.device
        inputs = {
            k: (v.to(device, self.model.dtype) if torch.is_floating_point(v) else v.to(device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        output = self.model.generate(
            **inputs, **options, use_cache=self.use_cache, pad_token_id=self.tokenizer.pad_token_id
        )
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = output[:, prompt_length:]
        decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        pad = self.tokenizer.pad_token_id
        results = []
        for row, text in enumerate(decoded):
            produced = int((new_tokens[row] != pad).sum()) if pad is not None else int(new_tokens.shape[1])
            counts = TokenCounts(input_tokens=int(inputs["attention_mask"][row].sum()), output_tokens=produced)
            results.append(GenerationResult(text=cut_at_stops(text, stops), token_counts=counts))
        return results
