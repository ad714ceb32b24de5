"""What one MLLMGuard task is told, defined once: each setting from the task's ``metadata`` if set, else its
environment variable, else the default; every value checked (name, type, allowed values) when the task is
built, so a typo fails before any request reaches the model under test or the judge.

Settings: ``data_dir`` (``MLLMGUARD_DATA_DIR``), ``split`` (``MLLMGUARD_SPLIT``: ``all``/``en``/``zh``),
``revision`` (``MLLMGUARD_REVISION``), ``token`` (metadata only; default: the saved login), ``on_bad_row``
(``MLLMGUARD_ON_BAD_ROW``: ``error``/``skip``), ``image_check`` (``MLLMGUARD_IMAGE_CHECK``:
``verify``/``decode``), ``hallucination_scale`` (``MLLMGUARD_HALLUCINATION_SCALE``: ``reference``/``binary``),
``on_unpaired`` (``MLLMGUARD_ON_UNPAIRED``: ``exclude``/``error``), ``judge``/``judge_args``
(``MLLMGUARD_JUDGE``/``MLLMGUARD_JUDGE_ARGS``, see :mod:`esc_guard_tasks.mllmguard.judges`), ``demo`` (metadata
only, the ``mllmguard_demo*`` tasks: ``true`` reads the project's DEMO DATA of :mod:`esc_guard_tasks.mllmguard.demo`
instead of ``data_dir``), ``prices`` (``MLLMGUARD_PRICES``: ``{"judge": [prompt, completion]}`` per million
tokens; the results then carry the judge's estimated cost).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from esc_guard_tasks.mllmguard import judges
from esc_guard_tasks.mllmguard.data import DATA_DIR_ENV, HUB_REVISION, SPLITS, normalize_config
from esc_guard_tasks.usage import check_prices

DEFAULTS: dict[str, Any] = {
    "data_dir": None,
    "split": "all",
    "revision": HUB_REVISION,
    "token": None,
    "on_bad_row": "error",
    "image_check": "verify",
    "hallucination_scale": "reference",
    "on_unpaired": "exclude",
}
ENV: dict[str, str] = {
    "data_dir": DATA_DIR_ENV,
    "split": "MLLMGUARD_SPLIT",
    "revision": "MLLMGUARD_REVISION",
    "on_bad_row": "MLLMGUARD_ON_BAD_ROW",
    "image_check": "MLLMGUARD_IMAGE_CHECK",
    "hallucination_scale": "MLLMGUARD_HALLUCINATION_SCALE",
    "on_unpaired": "MLLMGUARD_ON_UNPAIRED",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "split": tuple(SPLITS),
    "on_bad_row": ("error", "skip"),
    "image_check": ("verify", "decode"),
    "hallucination_scale": ("reference", "binary"),
    "on_unpaired": ("exclude", "error"),
}
JUDGE_KEYS = ("judge", "judge_args")
DEMO_KEY = "demo"
# the judge's [prompt, completion] price per million tokens: the run records its estimated cost
PRICES_KEY, PRICES_ENV = "prices", "MLLMGUARD_PRICES"
# metadata keys that are not settings: lmms-eval's task version, and what the task writes back for the results
RESERVED_KEYS = ("version", "mllmguard")
KNOWN_KEYS = (*DEFAULTS, *JUDGE_KEYS, DEMO_KEY, PRICES_KEY, *RESERVED_KEYS)


def _empty(value: Any) -> bool:
    return value is None or value == ""


def _check_text(key: str, value: Any, source: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"MLLMGuard {source}: {key} must be a non-empty text, got {value!r}")
    return str(value)


def _prices(task: str, metadata: Mapping[str, Any], environ: Mapping[str, str]) -> tuple:
    """``{"judge": [prompt, completion]}`` per million tokens, from the metadata or ``MLLMGUARD_PRICES`` (JSON)."""
    value, source = metadata.get(PRICES_KEY), f"metadata '{PRICES_KEY}' of {task}"
    if _empty(value):
        value, source = environ.get(PRICES_ENV), PRICES_ENV
    if _empty(value):
        return ()
    try:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"prices must be a JSON object, got {value!r}")
        checked = check_prices(value, roles=("judge",))
    except ValueError as err:  # json.JSONDecodeError included
        raise ValueError(f"MLLMGuard {source}: {err}") from None
    return tuple((role, (pair[0], pair[1])) for role, pair in sorted(checked.items()))


@dataclass(frozen=True)
class TaskSettings:
    """What one task was told: data source and scoring options; ``judge`` feeds ``judges.JudgeSettings``."""

    task: str
    config: str
    data_dir: str | None = None
    split: str = "all"
    revision: str = HUB_REVISION
    token: str | bool | None = None
    on_bad_row: str = "error"
    image_check: str = "verify"
    hallucination_scale: str = "reference"
    on_unpaired: str = "exclude"
    judge: tuple[tuple[str, Any], ...] = ()
    demo: bool = False
    prices: tuple[tuple[str, tuple[float, float]], ...] = ()

    @classmethod
    def resolve(
        cls, task: str, config: str, metadata: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
    ) -> TaskSettings:
        """Every setting from ``metadata``, else the environment, else the default; a bad name or value is a
        ``ValueError`` naming the key, where it came from and what is allowed."""
        metadata = metadata or {}
        environ = os.environ if environ is None else environ
        unknown = sorted(str(k) for k in metadata if k not in KNOWN_KEYS)
        if unknown:
            raise ValueError(
                f"MLLMGuard task {task}: unknown metadata key(s) {', '.join(unknown)}; "
                f"known: {', '.join(k for k in KNOWN_KEYS if k != 'mllmguard')}"
            )
        demo = metadata.get(DEMO_KEY, False)
        if not isinstance(demo, bool):
            raise ValueError(f"MLLMGuard metadata '{DEMO_KEY}' of {task}: must be true or false, got {demo!r}")
        if demo:
            if not _empty(metadata.get("data_dir")):
                raise ValueError(f"MLLMGuard task {task}: metadata sets both demo and data_dir; demo reads its own")
            from esc_guard_tasks.mllmguard.demo import demo_data_dir

            metadata = {**metadata, "data_dir": str(demo_data_dir())}
        values: dict[str, Any] = {}
        for key, default in DEFAULTS.items():
            value, source = metadata.get(key), f"metadata '{key}' of {task}"
            if _empty(value) and key in ENV:
                value, source = environ.get(ENV[key]), ENV[key]
            if _empty(value):
                values[key] = default
                continue
            if key in CHOICES:
                value = str(value).strip().lower()
                if value not in CHOICES[key]:
                    raise ValueError(f"MLLMGuard {source}: {value!r} is not one of {', '.join(CHOICES[key])}")
            elif key == "token":
                if not isinstance(value, (str, bool)):
                    raise ValueError(f"MLLMGuard {source}: token must be a text or true/false, got {value!r}")
            else:
                value = _check_text(key, value, source)
            values[key] = value
        judge = {k: metadata[k] for k in JUDGE_KEYS if not _empty(metadata.get(k))}
        settings = cls(
            task=task,
            config=normalize_config(config),
            judge=tuple(sorted(judge.items())),
            demo=demo,
            prices=_prices(task, metadata, environ),
            **values,
        )
        judges.get_judge(settings.judge_settings)  # builds (never loads) the judge: checks its name and arguments
        return settings

    @property
    def price_table(self) -> dict[str, list[float]]:
        return {role: list(pair) for role, pair in self.prices}

    @property
    def judge_settings(self) -> judges.JudgeSettings:
        return judges.JudgeSettings.from_sources(dict(self.judge))

    @property
    def scoring_options(self) -> dict[str, Any]:
        """The keyword options of :mod:`esc_guard_tasks.mllmguard.formulas`'s formulas."""
        return {"hallucination_scale": self.hallucination_scale, "on_unpaired": self.on_unpaired}

    def public(self) -> dict[str, Any]:
        """For the results JSON: never the token itself."""
        out = {k: v for k, v in asdict(self).items() if k not in ("judge", "token")}
        out["token"] = "set" if isinstance(self.token, str) else self.token
        return out
