"""Metric and aggregation functions the task YAMLs point at (installed as ``esc_guard_tasks.metrics``)."""
