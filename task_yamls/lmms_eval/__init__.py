"""lmms-eval task configs (YAML), installed as ``esc_guard_tasks.task_yamls.lmms_eval``.

Kept apart from ``task_yamls/lm_eval``: each harness indexes only its own folder. lmms-eval finds this
folder through the hook in :mod:`esc_guard_tasks.harness.lmms_eval_discovery`; the YAMLs point at
:mod:`esc_guard_tasks.harness.lmms_eval_mllmguard` with absolute ``!function`` paths.
"""
