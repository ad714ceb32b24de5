"""Judge backends shared by the benchmarks: a request goes in, the judge's raw reply comes out.

Parsing a reply into a score is the benchmark's business (e.g. ``esc_eval.rubric``);
backends only produce text, so every backend is scored by the same parser.
"""
