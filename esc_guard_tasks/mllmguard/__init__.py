"""MLLMGuard core: data loading, A/B answer extraction and reference strings (no harness imports)."""
