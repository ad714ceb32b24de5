"""ESC-RANK as a standalone ``evaluate`` module (loaded from the installed package, never the hub).

    from esc_guard_tasks.esc_rank import load_metric
    esc_rank = load_metric()
    esc_rank.compute(dialogues=[["AI assistant：Hello…", "ESC-Role：…", …]], language="en")

Each dialogue is a transcript in the reference's format (``AI assistant：`` / ``ESC-Role：``
prefixed strings, greeting first). The judge is configured as in the harness
(``judge``, ``judge_backend``, ``judge_args``).
"""

from __future__ import annotations

import datasets
import evaluate
from lm_eval.api.metrics import nanmean

from esc_guard_tasks.esc_eval.judging import get_judge, score_dialogues, verdicts_to_json
from esc_guard_tasks.esc_eval.protocol import Transcript
from esc_guard_tasks.esc_eval.settings import ESCSettings
from esc_guard_tasks.evaluate_metrics import metric_info
from esc_guard_tasks.metrics.esc_eval import dimension_scores, mean_of_dimensions

_DESCRIPTION = "ESC-Eval's seven dimensions (0-100) scored by ESC-RANK or another configured judge."
_CITATION = "Zhao et al., ESC-Eval: Evaluating Emotion Support Conversations in Large Language Models, EMNLP 2024."
_INPUTS = """
Args:
    dialogues: list of transcripts, each a list of reference-format strings.
    language: "en" or "zh" (selects the rubric prompts and the adapters).
    judge, judge_backend, judge_args: as the harness keys of the same names.
Returns:
    per dimension the mean 0-100 score over dialogues (invalid replies left out), "average" (the mean
    of the seven dimension means),
    "invalid_rate", and "verdicts": per dialogue, per dimension score / reference_score / raw reply.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class ESCRank(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _CITATION, _INPUTS, {"dialogues": datasets.Sequence(datasets.Value("string"))})

    def _compute(self, dialogues, language="en", judge="esc_rank", judge_backend="hf", judge_args=""):
        settings = ESCSettings.from_sources(
            {"judge": judge, "judge_backend": judge_backend, "judge_args": judge_args}, {}
        )
        transcripts = [
            Transcript.from_reference_lines(list(lines), card_id=i, language=language)
            for i, lines in enumerate(dialogues)
        ]
        verdicts = [verdicts_to_json(v) for v in score_dialogues(get_judge(settings), transcripts, judge)]
        rows = [dimension_scores(v) for v in verdicts]
        summary = {key: float(nanmean([row[key] for row in rows])) for key in (rows[0] if rows else {})}
        if rows:  # the paper's Average, as the harness prints it: the mean of the seven dimension rows
            summary["average"] = mean_of_dimensions([row["average"] for row in rows])
        return summary | {"verdicts": verdicts}
