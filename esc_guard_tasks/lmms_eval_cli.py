"""``lmms_eval``: lmms-eval's own command line, spelled as lm-eval users type it, failing when an evaluation fails.

lmms-eval 0.7 installs only ``lmms-eval``, and its ``cli_evaluate`` catches whatever an evaluation raises (an
unknown model, an unreachable hub, bad data), logs it and exits 0, which scripts and CI read as success. This
runs lmms-eval's own dispatcher with the same arguments and wraps the one function every evaluation goes through
(``lmms_eval.__main__.cli_evaluate_single``) to remember whether it raised: no log scraping, and lmms-eval's
output, results files and exit codes of its own are untouched.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

INSTALL_HINT = 'lmms_eval: lmms-eval is not installed; install it with: pip install "esc-guard-tasks[lmms]"'


def main(argv: list[str] | None = None) -> int:
    """Run ``lmms-eval`` with ``argv`` (default: this process's arguments); 1 if an evaluation raised."""
    try:
        import lmms_eval.__main__ as lmms_main
        from lmms_eval.cli.dispatch import main as dispatch
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] != "lmms_eval":
            raise  # lmms-eval is there but one of its own dependencies is not: its error says which
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    failures: list[BaseException] = []
    evaluate_single = lmms_main.cli_evaluate_single

    @functools.wraps(evaluate_single)
    def recording(*args: Any, **kwargs: Any) -> Any:
        try:
            return evaluate_single(*args, **kwargs)
        except Exception as err:
            failures.append(err)
            raise

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    lmms_main.cli_evaluate_single = recording
    try:
        dispatch()
    finally:
        lmms_main.cli_evaluate_single = evaluate_single
    if failures:
        first = failures[0]
        print(
            f"lmms_eval: {len(failures)} evaluation(s) failed (first: {type(first).__name__}: {first}); exit status 1",
            file=sys.stderr,
        )
        return 1
    return 0
