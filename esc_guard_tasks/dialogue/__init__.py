"""The dialogue engine any dialogue benchmark runs on: round-synchronous batches, per-dialogue seeds, resume
from the dialogue store. A benchmark brings a ``DialogueProtocol`` (``engine``); nothing here names one."""
