"""Harness task configs: ``lm_eval/`` for lm-evaluation-harness, ``lmms_eval/`` for lmms-eval."""
