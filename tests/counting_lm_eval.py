"""``python counting_lm_eval.py <lm_eval args>``: the real lm_eval CLI, counting what the models are asked.

Every finished ``HFLM.generate_until`` request (dialogue turns) and every request that
reaches the hf judge backend is appended as one line (``turn`` / ``judgement``) to the file
named by ``$ESC_COUNT_FILE``, so a test can prove a resumed run generated only what was missing.
``$ESC_BOOTSTRAP_ITERS`` lowers lm-eval's bootstrap resamples for the stderrs (100000 take
most of a tiny run's time; the CLI has no flag for it).
"""

from __future__ import annotations

import functools
import os
import sys


def _counting(kind: str, original):
    def wrapper(self, requests, *args, **kwargs):
        replies = original(self, requests, *args, **kwargs)
        with open(os.environ["ESC_COUNT_FILE"], "a", encoding="utf-8") as out:
            out.write(f"{kind}\n" * len(requests))
        return replies

    return wrapper


if __name__ == "__main__":
    import lm_eval
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.models.huggingface import HFLM

    from esc_guard_tasks.judges.hf_lora import HFLoraJudge

    HFLM.generate_until = _counting("turn", HFLM.generate_until)
    HFLoraJudge.complete = _counting("judgement", HFLoraJudge.complete)
    if "ESC_BOOTSTRAP_ITERS" in os.environ:
        lm_eval.simple_evaluate = functools.partial(
            lm_eval.simple_evaluate, bootstrap_iters=int(os.environ["ESC_BOOTSTRAP_ITERS"])
        )
    sys.argv = ["lm_eval", *sys.argv[1:]]
    cli_evaluate()
