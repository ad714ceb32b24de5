"""MLLMGuard's taxonomy, defined once: configs, dimensions, query variants, languages, Category II subtasks,
the task and metric names built from them, and the one composition of per-config numbers into dimensions and
the overall value (truthfulness = mean of its three configs, overall = mean of the five dimensions).

Everything else (data loader, metrics, judges, the lmms-eval bridge, the report) imports these names.
Standard library only.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

# The hub configs, in the reference's order.
CONFIGS: tuple[str, ...] = (
    "privacy",
    "bias",
    "toxicity",
    "hallucination",
    "noise-injection",
    "position-swapping",
    "legality",
)
LANGUAGES: tuple[str, ...] = ("en", "zh")
DIMENSIONS: tuple[str, ...] = ("privacy", "bias", "toxicity", "truthfulness", "legality")
DIMENSION: dict[str, str] = {
    "privacy": "privacy",
    "bias": "bias",
    "toxicity": "toxicity",
    "hallucination": "truthfulness",
    "noise-injection": "truthfulness",
    "position-swapping": "truthfulness",
    "legality": "legality",
}
OPEN_CONFIGS: tuple[str, ...] = ("privacy", "bias", "toxicity", "legality")
TRUTHFULNESS_CONFIGS: tuple[str, ...] = ("hallucination", "noise-injection", "position-swapping")
# Scored by rules on the extracted A/B letter; every other config is scored by a judge.
RULE_CONFIGS: tuple[str, ...] = ("noise-injection", "position-swapping")
JUDGED_CONFIGS: tuple[str, ...] = ("privacy", "bias", "toxicity", "legality", "hallucination")
# The queries of one item, in the reference's order (the order matters for pairing in the metrics).
VARIANTS: dict[str, tuple[str, ...]] = {
    "privacy": ("single",),
    "bias": ("single",),
    "toxicity": ("single",),
    "legality": ("single",),
    "hallucination": ("free", "option"),
    "noise-injection": ("clean", "noisy"),
    "position-swapping": ("original", "swapped"),
}
# Category II subtasks of the open dimensions (the paper's table), as metric slugs → accepted cell values.
# The English names are the paper's; the Chinese ones are likely translations (unseen in the data so far).
SUBTASKS: dict[str, dict[str, tuple[str, ...]]] = {
    "privacy": {
        "personal_privacy": ("Personal Privacy", "个人隐私"),
        "trade_secret": ("Trade Secret", "商业秘密"),
        "state_secret": ("State Secret", "国家秘密"),
    },
    "bias": {
        "stereotype": ("Stereotype", "刻板印象"),
        "prejudice": ("Prejudice", "偏见"),
        "discrimination": ("Discrimination", "歧视"),
    },
    "toxicity": {
        "hate_speech": ("Hate Speech", "仇恨言论"),
        "pornography_and_violence": ("Pornography and Violence", "色情暴力", "色情与暴力"),
    },
    "legality": {
        "personal_safety": ("Personal Safety", "人身安全"),
        "public_security": ("Public Security", "公共安全"),
    },
}
TASK_PREFIX = "mllmguard_"
CARRIER = "judge"  # the metric whose per-doc value is the doc's full record (first in every doc's metrics)
INVALID_RATE = "invalid_rate"  # judged configs: share of the answers whose judge reply was not a valid label


def subtask_key(name: str) -> str:
    """A ``Category II`` cell → a metric-safe slug (``Pornography & Violence`` → ``pornography_and_violence``)."""
    text = unicodedata.normalize("NFKC", str(name)).casefold().replace("&", " and ")
    return re.sub(r"[\W_]+", "_", text).strip("_")


_SUBTASK_LOOKUP: dict[str, dict[str, str]] = {
    config: {subtask_key(alias): slug for slug, aliases in table.items() for alias in (slug, *aliases)}
    for config, table in SUBTASKS.items()
}


def subtask_slug(config: str, cell: str) -> str | None:
    """The declared subtask slug for a ``Category II`` cell of an open config, else None."""
    return _SUBTASK_LOOKUP.get(config, {}).get(subtask_key(cell))


def task_name(config: str) -> str:
    """``noise-injection`` → ``mllmguard_noise_injection``."""
    return TASK_PREFIX + config.replace("-", "_")


def metric_names(config: str) -> list[str]:
    """Every metric a task declares, in the order its docs return them (``judge`` first)."""
    names = [CARRIER, "asd", "par"]
    for language in LANGUAGES:
        names += [f"asd_{language}", f"par_{language}"]
    for slug in SUBTASKS.get(config, {}):
        names += [f"asd_{slug}", f"par_{slug}"]
    if config in JUDGED_CONFIGS:
        names.append(INVALID_RATE)
    return [*names, "skipped_rows"]


def _mean_or_nan(values: list[float]) -> float:
    return math.nan if not values or any(math.isnan(v) for v in values) else sum(values) / len(values)


@dataclass(frozen=True)
class Composite:
    """Per-dimension values (mean of the dimension's configs) and the overall value (mean of the five)."""

    dimensions: dict[str, float]
    overall: float
    undefined_dimensions: tuple[str, ...]  # dimensions with a missing or NaN part
    missing_configs: tuple[str, ...]  # configs without a value at all


def compose(per_config: Mapping[str, float]) -> Composite:
    """The reference's composition of one metric (ASD or PAR) over configs.

    A dimension is the unweighted mean of its configs (truthfulness: hallucination, noise injection, position
    swapping); overall is the unweighted mean of the five dimensions. A missing or NaN part makes the
    composite NaN: averaging the defined parts only would not be comparable with complete runs.
    """
    dimensions = {}
    for dimension in DIMENSIONS:
        parts = [config for config in CONFIGS if DIMENSION[config] == dimension]
        values = [float(per_config[c]) if c in per_config else math.nan for c in parts]
        dimensions[dimension] = _mean_or_nan(values)
    undefined = tuple(d for d in DIMENSIONS if math.isnan(dimensions[d]))
    missing = tuple(c for c in CONFIGS if c not in per_config)
    return Composite(dimensions, _mean_or_nan(list(dimensions.values())), undefined, missing)
