"""ESC-RANK, the ESC-Eval judge: locating, converting (no remote code) and loading its checkpoints."""
