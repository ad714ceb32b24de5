"""Run-time configuration of ESC-Eval: one key set, two sources.

Keys come from lm-eval's ``--metadata`` (JSON) and, with the same meaning, from
environment variables ``ESC_EVAL_<KEY>``; ``--metadata`` wins. Note that lm-eval also
merges ``--model_args`` into task metadata, so unknown keys are ignored here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "ESC_EVAL_"

DEFAULT_ROLE_MODEL = "hf"
DEFAULT_ROLE_MODEL_ARGS = "pretrained=haidequanbu/ESC-Role,dtype=auto"
# Qwen1.5-Chat stock sampling (ESC-Role's base model); max 512 new tokens as in the reference.
DEFAULT_ROLE_GEN_KWARGS: dict[str, Any] = {
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.05,
    "max_gen_toks": 512,
}
JUDGES = ("esc_rank", "llm_rubric", "none")
JUDGE_BACKENDS = ("hf", "vllm", "openai")
# Argument names whose values must never reach results files or logs.
SECRET_ARG_MARKERS = ("key", "token", "secret", "password")


def parse_kv(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``a=1,b=x`` (lm-eval's model_args syntax) or a mapping → dict with typed values."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(value)


def public_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Drop secret-looking arguments before anything is written to results."""
    return {k: v for k, v in args.items() if not any(m in k.lower() for m in SECRET_ARG_MARKERS)}


@dataclass(frozen=True)
class ESCSettings:
    role_model: str = DEFAULT_ROLE_MODEL
    role_model_args: str = DEFAULT_ROLE_MODEL_ARGS
    role_gen_kwargs: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ROLE_GEN_KWARGS))
    rounds: int = 5
    seed: int = 1234
    data_dir: str | None = None
    judge: str = "esc_rank"
    judge_backend: str = "hf"
    judge_args: str = ""
    # The SQLite file finished turns are persisted to (resume after a crash); None: the
    # default file in the cache folder; "none": no persistence.
    dialogue_store: str | None = None

    @classmethod
    def from_sources(cls, metadata: Mapping[str, Any], environ: Mapping[str, str]) -> ESCSettings:
        """Resolve every key: ``--metadata`` first, then ``ESC_EVAL_<KEY>``, then the default."""
        raw: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for key in cls.__dataclass_fields__:
            env_key = ENV_PREFIX + key.upper()
            if key in metadata and metadata[key] is not None:
                raw[key], origin[key] = metadata[key], f"--metadata key '{key}'"
            elif env_key in environ:
                raw[key], origin[key] = environ[env_key], f"environment variable {env_key}"
        return cls._validated(raw, origin)

    @classmethod
    def _validated(cls, raw: dict[str, Any], origin: dict[str, str]) -> ESCSettings:
        def fail(key: str, why: str) -> ValueError:
            return ValueError(f"ESC-Eval setting from {origin[key]}: {why} (got {raw[key]!r})")

        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key in ("rounds", "seed"):
                try:
                    values[key] = int(value)
                except (TypeError, ValueError):
                    raise fail(key, "must be an integer") from None
                if key == "rounds" and values[key] < 1:
                    raise fail(key, "must be at least 1")
            elif key == "role_gen_kwargs":
                try:
                    overrides = parse_kv(json.loads(value) if _looks_like_json(value) else value)
                    # null removes a default (e.g. top_k for APIs that reject it)
                    merged = {**DEFAULT_ROLE_GEN_KWARGS, **overrides}
                    values[key] = {k: v for k, v in merged.items() if v is not None}
                except (ValueError, TypeError) as err:
                    raise fail(key, f"must be a JSON object or k=v,k=v ({err})") from None
            elif key == "role_model_args" and isinstance(value, Mapping):
                values[key] = ",".join(f"{k}={v}" for k, v in value.items())
            else:
                values[key] = str(value)
        if values.get("judge", "none") not in JUDGES:
            raise fail("judge", f"must be one of {', '.join(JUDGES)}")
        if values.get("judge_backend", "hf") not in JUDGE_BACKENDS:
            raise fail("judge_backend", f"must be one of {', '.join(JUDGE_BACKENDS)}")
        return cls(**values)

    def role_player_identity(self) -> dict[str, Any]:
        """Who played the help-seeker, as written into the results JSON."""
        args = public_args(parse_kv(self.role_model_args))
        return {
            "backend": self.role_model,
            "model": args.get("pretrained", args.get("model", "")),
            "revision": args.get("revision", "main"),
            "model_args": args,
            "gen_kwargs": self.role_gen_kwargs,
            "seed": self.seed,
        }

    def judge_identity(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "backend": self.judge_backend,
            "args": public_args(parse_kv(self.judge_args)),
        }

    def describe(self) -> dict[str, Any]:
        """Everything a reader of the results needs to know about how the dialogues were made."""
        return {
            "rounds": self.rounds,
            "seed": self.seed,
            "data_dir": self.data_dir,
            "role_player": self.role_player_identity(),
            "judge": self.judge_identity(),
        }


def _looks_like_json(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip().startswith("{")
