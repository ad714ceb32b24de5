"""``python -m esc_guard_tasks.esc_rank.convert``: the same command as ``esc-guard convert-esc-rank``."""

import sys

from esc_guard_tasks.esc_rank.convert.cli import main

sys.exit(main())
