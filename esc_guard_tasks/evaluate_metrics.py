"""What the package's ``evaluate`` modules (ESC-RANK, GuardRank) declare the same way: their ``MetricInfo``.

``evaluate`` imports each module script by path and takes the first ``EvaluationModule`` subclass it finds in
the script's namespace, so the scripts share this function rather than a base class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import evaluate


def metric_info(description: str, citation: str, inputs: str, features: dict[str, Any]) -> evaluate.MetricInfo:
    """A module's ``_info``: its description, citation, documented arguments and the features of its inputs."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs,
        features=datasets.Features(features),
    )
