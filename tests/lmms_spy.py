"""Run the ``lmms-eval`` command with spies on what a LLaVA model receives; for tests/test_lmms_models.py.

Usage: ``python tests/lmms_spy.py OUT.jsonl <lmms-eval arguments…>``. Before lmms-eval's own CLI entry point
(``lmms_eval.cli.dispatch:main``, the ``lmms-eval`` console script) runs, three transformers calls are
wrapped, whichever lmms-eval model class makes them, and each call appends one JSON line to ``OUT.jsonl``:

* ``chat_template``: ``ProcessorMixin.apply_chat_template``: the conversation (roles; text and images in
  order) and the rendered prompt text;
* ``processor``: ``LlavaProcessor.__call__``, recorded *before* the call (so a call that then fails is still
  seen): the prompt texts, every image (mode, size, SHA-256 of its RGB pixels), other keyword names;
* ``generate``: ``GenerationMixin.generate``: per row the unpadded input ids, the SHA-256 of the pixel
  values, the keyword arguments, the effective decoding settings (the model's generation config updated with
  those arguments, as ``generate`` does) and the new token ids.

Images are compared by pixels, so the same picture reached through a path, a PIL object or a base64 PNG
has the same fingerprint (:func:`image_fingerprint`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

EFFECTIVE = ("max_new_tokens", "do_sample", "num_beams", "temperature", "top_p", "top_k")


def image_fingerprint(image: Any) -> dict[str, Any]:
    """Mode, size and the SHA-256 of the RGB pixels of a PIL image."""
    rgb = image.convert("RGB")
    return {"mode": image.mode, "size": list(image.size), "sha256": hashlib.sha256(rgb.tobytes()).hexdigest()}


def _plain(value: Any) -> Any:
    """JSON-able copy: PIL images as fingerprints, tensors as shape + hash, other objects as repr."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return {"image": image_fingerprint(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "shape") and hasattr(value, "numpy"):
        return {"tensor": list(value.shape), "sha256": _tensor_sha(value)}
    return repr(value)


def _tensor_sha(tensor: Any) -> str:
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def _flat_images(images: Any) -> list[Any]:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flat_images(item)]
    return [images]


def install(out: Path) -> None:
    """Wrap the three calls; every record is appended to ``out`` as one JSON line."""
    import torch
    from transformers import GenerationMixin, LlavaProcessor, ProcessorMixin

    def write(record: dict[str, Any]) -> None:
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    original_template = ProcessorMixin.apply_chat_template

    @functools.wraps(original_template)
    def apply_chat_template(self, conversation, *args, **kwargs):
        text = original_template(self, conversation, *args, **kwargs)
        write({"event": "chat_template", "conversation": _plain(conversation), "text": _plain(text)})
        return text

    original_call = LlavaProcessor.__call__

    @functools.wraps(original_call)
    def processor_call(self, *args, **kwargs):
        text = kwargs.get("text", args[1] if len(args) > 1 else None)
        images = kwargs.get("images", args[0] if args else None)
        write(
            {
                "event": "processor",
                "text": [text] if isinstance(text, str) else list(text or []),
                "images": [image_fingerprint(image) for image in _flat_images(images)],
                "other_kwargs": sorted(k for k in kwargs if k not in ("text", "images")),
            }
        )
        return original_call(self, *args, **kwargs)

    original_generate = GenerationMixin.generate

    @functools.wraps(original_generate)
    def generate(self, *args, **kwargs):
        tensors = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        settings = {k: _plain(v) for k, v in kwargs.items() if k not in tensors}
        config = copy.deepcopy(self.generation_config)
        config.update(**{k: v for k, v in kwargs.items() if k not in tensors and hasattr(config, k)})
        output = original_generate(self, *args, **kwargs)
        input_ids, mask = tensors["input_ids"], tensors.get("attention_mask")
        rows = []
        for row in range(input_ids.shape[0]):
            ids = input_ids[row] if mask is None else input_ids[row][mask[row].bool()]
            rows.append({"input_ids": ids.tolist(), "new_tokens": output[row, input_ids.shape[1] :].tolist()})
        pixels = tensors.get("pixel_values")
        write(
            {
                "event": "generate",
                "rows": rows,
                "pixel_values": None
                if pixels is None
                else {"shape": list(pixels.shape), "sha256": _tensor_sha(pixels)},
                "kwargs": settings,
                "effective": {name: getattr(config, name) for name in EFFECTIVE},
            }
        )
        return output

    ProcessorMixin.apply_chat_template = apply_chat_template
    LlavaProcessor.__call__ = processor_call
    GenerationMixin.generate = generate


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one run, in call order (none if no call was made)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    from lmms_eval.cli.dispatch import main

    sys.argv = ["lmms-eval", *sys.argv[2:]]
    main()
    sys.exit(0)  # as `python -m lmms_eval` does
