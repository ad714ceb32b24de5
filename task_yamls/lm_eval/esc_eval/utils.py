"""What the ESC-Eval YAMLs beside this file name as ``!function utils.<name>``.

lm-eval up to 0.4.11 resolves ``!function a.b.c`` as the file ``a/b.py`` beside the YAML, never as an
installed module; a thin ``utils.py`` here is the one spelling every 0.4.x release understands. The code
lives in the package: this file only names it.
"""

from esc_guard_tasks.esc_eval.cards import load_card_dataset
from esc_guard_tasks.harness.lm_eval_task import ESCEvalTask
from esc_guard_tasks.metrics.esc_eval import mean_of_dimensions, process_results, trial_sd

__all__ = ["ESCEvalTask", "load_card_dataset", "mean_of_dimensions", "process_results", "trial_sd"]
