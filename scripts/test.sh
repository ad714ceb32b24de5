#!/usr/bin/env bash
# The whole test suite on a bare machine (the README's test command; CI runs it too).
# Four environments, because vLLM's CPU build and lmms-eval (without torchvision) each pin dependency sets
# of their own, and the fourth holds the lowest harness releases setup.cfg declares; each step installs
# what it needs first.
#
#   scripts/test.sh           everything: main venv (+ headless Chromium through apt-get), vLLM venv, lmms-eval venv
#   scripts/test.sh --quick   the fast lane: main venv only, no slow tests, no browser install, no extra venvs
#
# ESC_GUARD_BROWSER_REQUIRED=0 skips the Chromium install (the report's browser tests then skip).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
case "${1:-}" in
    --quick) quick=1 ;;
    "") ;;
    *) echo "usage: scripts/test.sh [--quick]" >&2; exit 2 ;;
esac

scripts/setup.sh --test
# The main suite on every core (pytest-xdist), a test file per worker: its tests share their module fixtures
# (tiny models, one harness run read by several tests); tests run single-threaded (tests/conftest.py).
# At most 4 workers: each holds its own torch and tiny models in memory.
workers=$(nproc); [ "$workers" -le 4 ] || workers=4
XDIST=(-n "$workers" --dist loadfile)
if [ "$quick" = 1 ]; then
    echo "scripts/test.sh --quick: main venv, not slow, no browser install (the report's browser tests skip if Chromium is absent)" >&2
    ESC_GUARD_BROWSER_REQUIRED=0 exec .venv/bin/pytest -m "not slow" "${XDIST[@]}"
fi

# Headless Chromium (Debian's package) for the HTML report's browser tests; once installed they must run.
if [ "${ESC_GUARD_BROWSER_REQUIRED:-1}" = 0 ]; then
    echo "scripts/test.sh: ESC_GUARD_BROWSER_REQUIRED=0: not installing Chromium; the report's browser tests skip without it" >&2
else
    if ! command -v chromium >/dev/null; then
        sudo=$([ "$(id -u)" = 0 ] || echo sudo)
        echo "scripts/test.sh: installing Debian's chromium with ${sudo:+sudo }apt-get for the HTML report's browser tests" \
            "(set ESC_GUARD_BROWSER_REQUIRED=0 to skip it)" >&2
        $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
    export ESC_GUARD_BROWSER_REQUIRED=1
fi

# The other three venvs install while the main suite runs (mostly downloads and unpacking), one after the other,
# from a copy of the sources: pip builds in the source tree, and the main suite builds a wheel of it as well.
copy=$(mktemp -d)
setup_log=$(mktemp)
trap 'rm -rf "$copy" "$setup_log"' EXIT
tar -c --exclude='./.venv*' --exclude=./build --exclude=./.git . | tar -x -C "$copy"
(
    for venv in vllm lmms oldest; do
        VENV="$PWD/.venv-$venv" "$copy/scripts/setup_$venv.sh" || exit 1
    done
) >"$setup_log" 2>&1 &
setups=$!
status=0
.venv/bin/pytest "${XDIST[@]}" || status=$?
if ! wait "$setups"; then
    cat "$setup_log" >&2
    echo "scripts/test.sh: setting up the vLLM, lmms-eval or oldest venv failed (its log is above)" >&2
    status=1
fi
[ "$status" = 0 ] || exit "$status"

.venv-vllm/bin/pytest -m vllm tests/test_vllm.py tests/test_vllm_serve.py tests/test_data_parallel.py

.venv-lmms/bin/pytest -m lmms tests/test_lmms_eval.py tests/test_report_mllmguard.py tests/test_security.py \
    tests/test_lmms_eval_cli.py tests/test_offline_errors.py tests/test_lmms_models.py tests/test_mllmguard_demo.py
# lmms-eval's lowest declared release is the one the step above runs in full; this checks that it is.
ESC_GUARD_EXPECT_OLDEST=lmms-eval .venv-lmms/bin/pytest tests/test_harness_versions.py -k declared_lowest

# lm-eval: the smoke subset at the lowest declared release (the full suite above runs the newest).
ESC_GUARD_EXPECT_OLDEST=lm-eval .venv-oldest/bin/pytest -m oldest tests/test_harness_versions.py
