"""Where ESC-RANK's weights come from, and the one-time conversion that frees them of remote code.

ESC-RANK is 14 LoRA adapters (``haidequanbu/ESC-RANK``) on ``internlm/internlm2-chat-7b``,
whose modeling code only runs as hub remote code. Given hub ids or local folders, this
resolves both, converts an InternLM2 base (and its fused-``wqkv`` adapters) once into the
Llama layout that stock transformers and vLLM load (cached, keyed by the sources), and
returns the converted base and the adapter folders. An already converted base (from
``esc-guard convert-esc-rank``) is used as is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from esc_guard_tasks.esc_rank.convert.bundle import adapter_dirs
from esc_guard_tasks.hub import cache_dir, local_folder


def cache_root() -> Path:
    return cache_dir() / "esc_rank"


def model_type(folder: Path) -> str:
    try:
        return json.loads((folder / "config.json").read_text("utf-8")).get("model_type", "")
    except FileNotFoundError:
        raise RuntimeError(f"{folder / 'config.json'}: not a model folder (no config.json)") from None


def adapter_folders(root: Path) -> dict[str, str]:
    """Every adapter below ``root`` by folder name (``fluency``, ``fluency_en``, …)."""
    return {folder.name: str(folder) for folder in adapter_dirs(root)}


def resolve_esc_rank(
    pretrained: str,
    adapters: str,
    *,
    revision: str | None = None,
    adapters_revision: str | None = None,
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(converted base folder, {adapter name: folder}, identity for the results JSON)."""
    base = local_folder(pretrained, revision, "ESC-RANK base model")
    adapter_root = local_folder(adapters, adapters_revision, "ESC-RANK adapters")
    identity: dict[str, Any] = {
        "pretrained": pretrained,
        "revision": revision or "main",
        "adapters": adapters,
        "adapters_revision": adapters_revision or "main",
    }
    if model_type(base) != "internlm2":
        return str(base), adapter_folders(adapter_root), identity | {"converted": False}

    from esc_guard_tasks.esc_rank.convert import convert_esc_rank

    # Dynamic NTK scaling only acts beyond max_position_embeddings (32768): far above any ESC-Eval
    # input. Dropping it keeps hf exact there and lets vLLM (which scales at every length) agree.
    digest = hashlib.sha256(json.dumps([str(base.resolve()), str(adapter_root.resolve()), "rope=drop"]).encode())
    target = cache_root() / digest.hexdigest()[:16]
    if not (target / "manifest.json").is_file():
        from filelock import FileLock

        # Data-parallel ranks reach this at the same time: one converts, the others wait for its
        # result instead of each loading the 7B base once more (memory and disk times the ranks).
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{target}.lock"):
            if not (target / "manifest.json").is_file():
                convert_esc_rank(base, adapter_root, target, rope_scaling="drop")
    return str(target / "base"), adapter_folders(target / "adapters"), identity | {"converted": True}
