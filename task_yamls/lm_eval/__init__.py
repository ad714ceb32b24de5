"""lm-evaluation-harness task configs (this folder is what lm-eval's TaskManager scans)."""
