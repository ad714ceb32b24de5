"""``lm_eval`` under ``accelerate launch`` on CPU processes, sharded as lm-eval's hf model shards on GPUs.

lm-eval 0.4.13's ``HFLM`` takes its rank and world size from the accelerator only when it
counts more than one GPU; on CPU every process would run the whole evaluation (no sharding).
This script gives HFLM, after its own ``__init__``, what that GPU branch assigns (rank and
world size from the accelerator it already holds), then runs lm-eval's CLI unchanged. Every
HFLM built in the process gets it (the supporter and an ``hf`` role-player), as on GPUs.

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/cpu_data_parallel.py <lm_eval args>
"""

from __future__ import annotations

from typing import Any

from lm_eval.models.huggingface import HFLM


def shard_cpu_processes() -> None:
    original = HFLM.__init__

    def init(self: HFLM, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and self._world_size == 1:
            self._rank = accelerator.local_process_index
            self._world_size = accelerator.num_processes

    HFLM.__init__ = init


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    shard_cpu_processes()
    cli_evaluate()
