"""Harness task configs. This package's folder is what lm-eval's TaskManager scans."""
