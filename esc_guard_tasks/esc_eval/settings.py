"""Run-time configuration of ESC-Eval: one key set, two sources.

Keys come from lm-eval's ``--metadata`` (JSON) and, with the same meaning, from
environment variables ``ESC_EVAL_<KEY>``; ``--metadata`` wins. Every given key is checked when
the settings are read (types, ranges, backend names, judge argument values), and the error names
the key, where it came from and what it accepts. lm-eval also merges ``--model_args`` into task
metadata, so unknown keys are not errors; ``unknown_key_warnings`` names the key a near miss
(``round``, ``judge_arg``) probably meant.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esc_guard_tasks.judges.args import parse_kv, parse_pairs, public_args
from esc_guard_tasks.usage import check_prices

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
# ESC_EVAL_* variables that are not settings keys.
OTHER_ENV = frozenset({"ESC_EVAL_JUDGE_API_KEY"})


@dataclass(frozen=True)
class ESCSettings:
    role_model: str = DEFAULT_ROLE_MODEL
    role_model_args: str = DEFAULT_ROLE_MODEL_ARGS
    role_gen_kwargs: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ROLE_GEN_KWARGS))
    rounds: int = 5
    seed: int = 1234
    # Dialogues per card, each with its own seeker seeds (trial 0 is the single-trial run's dialogue).
    trials: int = 1
    data_dir: str | None = None
    judge: str = "esc_rank"
    judge_backend: str = "hf"
    judge_args: str = ""
    # The SQLite file finished turns are persisted to (resume after a crash); None: the
    # default file in the cache folder; "none": no persistence.
    dialogue_store: str | None = None
    # Per role (role_player, supporter, judge): [prompt, completion] price per million tokens; the run then
    # records and prints its estimated cost. No built-in price list: prices change, and differ per provider.
    prices: dict[str, list[float]] = field(default_factory=dict)

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
        """Every given key checked and converted, then the judge arguments against the judge and its backend."""
        values: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                values[key] = _checked(key, value)
            except ValueError as err:
                raise _error(key, raw, origin, str(err)) from None
        settings = cls(**values)
        if settings.judge != "none":
            from esc_guard_tasks.esc_eval.checks import judge_args_for

            try:
                judge_args_for(settings.judge, settings.judge_backend, parse_kv(settings.judge_args))
            except ValueError as err:
                blamed = next((k for k in ("judge_args", "judge_backend", "judge") if k in raw), None)
                where = f"{origin[blamed]}" if blamed else "the default judge settings"
                raise ValueError(
                    f"ESC-Eval setting from {where}: {err} (judge={settings.judge},"
                    f" judge_backend={settings.judge_backend})"
                ) from None
        return settings

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
            "trials": self.trials,
            "data_dir": self.data_dir,
            "role_player": self.role_player_identity(),
            "judge": self.judge_identity(),
            "prices": self.prices,
        }


def unknown_key_warnings(
    metadata: Mapping[str, Any], environ: Mapping[str, str], ignore: Collection[str] = ()
) -> list[str]:
    """Warnings for ``--metadata`` keys and ``ESC_EVAL_*`` variables that are not settings keys but close to one.

    ``ignore``: the ``--model_args`` keys lm-eval merged into the metadata (the supporter's, not ours)."""
    known = list(ESCSettings.__dataclass_fields__)
    found = [(key, f"--metadata key '{key}'", key) for key in metadata if key not in known and key not in ignore]
    found += [
        (name, f"environment variable {name}", name.removeprefix(ENV_PREFIX).lower())
        for name in environ
        if name.startswith(ENV_PREFIX) and name not in OTHER_ENV and name.removeprefix(ENV_PREFIX).lower() not in known
    ]
    warnings = []
    for _, where, key in found:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        if close:
            spelled = close[0] if where.startswith("--metadata") else ENV_PREFIX + close[0].upper()
            warnings.append(f"ESC-Eval: {where} is not a setting and is ignored; did you mean {spelled}?")
    return warnings


def _error(key: str, raw: Mapping[str, Any], origin: Mapping[str, str], why: str) -> ValueError:
    # argument strings may hold credentials; role_gen_kwargs errors show the one bad value already
    shown = "" if key in ("role_model_args", "judge_args", "role_gen_kwargs") else f" (got {raw[key]!r})"
    return ValueError(f"ESC-Eval setting from {origin[key]}: {why}{shown}")


def _checked(key: str, value: Any) -> Any:
    """One key's value, checked and converted; ValueError says what the key accepts."""
    from esc_guard_tasks.esc_eval import checks

    if key in ("rounds", "seed", "trials"):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        return checks.integer(None if key == "seed" else 1)(value)
    if key == "role_gen_kwargs":
        overrides = checks.checked(_pairs(value), checks.GEN_KWARGS, "role_gen_kwargs")
        # null removes a default (e.g. top_k for APIs that reject it)
        merged = {**DEFAULT_ROLE_GEN_KWARGS, **overrides}
        return {k: v for k, v in merged.items() if v is not None}
    if key in ("role_model_args", "judge_args"):
        return ",".join(f"{k}={v}" for k, v in _pairs(value).items())
    if key == "role_model":
        return _registered_model(checks.text(value))
    if key == "prices":
        return check_prices(_pairs(value))
    if key == "judge":
        return checks.choice(*JUDGES)(value)
    if key == "judge_backend":
        return checks.choice(*JUDGE_BACKENDS)(value)
    if key == "data_dir":
        if not Path(checks.text(value)).expanduser().is_dir():
            raise ValueError("must be an existing folder holding card_high_en.json / card_high_zh.json")
        return str(value)
    return checks.text(value)


def _pairs(value: Any) -> dict[str, Any]:
    """A JSON object (or a string holding one) or lm-eval's ``k=v,k=v``; anything else names the problem."""
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"must be a JSON object or k=v,k=v ({err})") from None
    if isinstance(value, str):
        return parse_pairs(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise ValueError(f"must be a JSON object or k=v,k=v, not a JSON {type(value).__name__}")


def _registered_model(name: str) -> str:
    """A model name lm-eval's registry knows (checked here, not when the role-player loads after the supporter)."""
    try:
        from lm_eval.api.registry import model_registry
    except ImportError:  # lm-eval <= 0.4.11: a plain dict under another name
        from lm_eval.api.registry import MODEL_REGISTRY as model_registry  # noqa: N811 - the older name

    if len(model_registry) == 0:
        import lm_eval.models  # noqa: F401 - registers the built-in backends
    if name not in model_registry:
        raise ValueError(f"must be a registered lm-eval model: {', '.join(sorted(model_registry.keys()))}")
    return name
