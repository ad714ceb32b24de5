"""Performance benchmarks of esc-guard-tasks (not tests: timing never goes into the test suite).

Run ``.venv/bin/python -m benchmarks.run`` (``--quick`` for a few minutes); see ``benchmarks/REPORT.md``.
"""
