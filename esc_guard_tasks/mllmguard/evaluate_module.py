"""GuardRank's ``evaluate`` module, loaded from this installed package (no hub lookup)."""

from __future__ import annotations


def load_metric(**kwargs):
    """The GuardRank ``evaluate`` module (``guardrank_metric.py`` next to this file)."""
    from pathlib import Path

    import evaluate

    return evaluate.load(str(Path(__file__).with_name("guardrank_metric.py")), **kwargs)
