"""Thin bridges from the harness-agnostic core into lm-eval (and, later, lmms-eval)."""
