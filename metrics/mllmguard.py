"""MLLMGuard metrics: ASD and PAR (×100) per config, per language, truthfulness and overall, as plain functions
over per-query records. The formulas live in the MLLMGuard core, :mod:`esc_guard_tasks.mllmguard.formulas`
(module docstring: definitions, exclusions, undefined values); this module is their public entry point."""

from esc_guard_tasks.mllmguard.formulas import (
    ConfigResult,
    asd,
    asd_en,
    asd_overall,
    asd_truthfulness,
    asd_zh,
    config_result,
    par,
    par_en,
    par_overall,
    par_truthfulness,
    par_zh,
    position_outcome,
    smooth,
    summarize,
)

__all__ = [
    "ConfigResult",
    "asd",
    "asd_en",
    "asd_overall",
    "asd_truthfulness",
    "asd_zh",
    "config_result",
    "par",
    "par_en",
    "par_overall",
    "par_truthfulness",
    "par_zh",
    "position_outcome",
    "smooth",
    "summarize",
]
