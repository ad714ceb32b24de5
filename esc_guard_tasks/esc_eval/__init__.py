"""ESC-Eval core: protocol, role cards, settings and the dialogue engine (no harness imports)."""
