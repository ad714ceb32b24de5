#!/usr/bin/env bash
# The whole test suite on a bare machine (the README's test command; CI runs it too).
# Three environments, because vLLM's CPU build and lmms-eval (without torchvision) each pin
# dependency sets of their own; each step installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
# Headless Chromium (Debian's package) for the HTML report's browser tests; once installed they must run.
if ! command -v chromium >/dev/null; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
export ESC_GUARD_BROWSER_REQUIRED=1
.venv/bin/pytest

scripts/setup_vllm.sh
.venv-vllm/bin/pytest -m vllm tests/test_vllm.py tests/test_vllm_serve.py tests/test_data_parallel.py

scripts/setup_lmms.sh
.venv-lmms/bin/pytest -m lmms tests/test_lmms_eval.py tests/test_report_mllmguard.py tests/test_security.py
