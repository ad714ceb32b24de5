"""ESC-RANK, the ESC-Eval judge: locating, converting (no remote code) and loading its checkpoints."""


def load_metric(**kwargs):
    """The ESC-RANK ``evaluate`` module, loaded from this installed package (no hub lookup)."""
    from pathlib import Path

    import evaluate

    return evaluate.load(str(Path(__file__).with_name("esc_rank_metric.py")), **kwargs)
