"""The judge layer both benchmarks share: backends, the verdict, the arguments, the registry.

A backend (``hf_lora``, ``vllm_lora``, ``openai_chat``) takes requests and returns raw replies; parsing a reply
into a score is the benchmark's business (e.g. ``esc_eval.rubric``), so every backend is scored by the same
parser, and every judge returns the one :class:`~esc_guard_tasks.judges.base.Verdict`. Judge arguments are read
and checked once (``args``), and each judge is built once per process by the one table of builders
(``registry``), behind the persistent cache (``cache``).
"""
