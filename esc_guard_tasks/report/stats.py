"""Bootstrap confidence intervals shared by the HTML report and the agreement statistics.

Units (dialogues, MLLMGuard items, labelled pairs) are resampled by index with ``scipy.stats.bootstrap``
(percentile method, which stays defined for the small, discrete samples these reports often have) from a
fixed seed, so a report is reproducible byte for byte.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SEED = 20240607
RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval (NaN bounds when fewer than two units or undefined)."""

    value: float
    low: float = math.nan
    high: float = math.nan


def bootstrap(
    units: int, statistic: Callable[[np.ndarray], float], *, seed: int = SEED, resamples: int = RESAMPLES
) -> Estimate:
    """``statistic(indices)`` on all ``units`` and its 95% percentile interval over resampled indices."""
    from scipy import stats

    indices = np.arange(units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs (NaN correlations) and degenerate resamples
        value = float(statistic(indices)) if units else math.nan
        if units < 2 or math.isnan(value):
            return Estimate(value)
        result = stats.bootstrap(
            (indices,),
            statistic,
            vectorized=False,
            n_resamples=resamples,
            confidence_level=LEVEL,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
    interval = result.confidence_interval
    return Estimate(value, float(interval.low), float(interval.high))
