#!/usr/bin/env bash
# Create ./.venv-oldest: esc-guard-tasks (non-editable, with its test extra) next to the LOWEST harness release
# setup.cfg declares, for the smoke tests marked `oldest` (task listing and one tiny run through the real CLI):
#   scripts/setup_oldest.sh && .venv-oldest/bin/pytest -m oldest tests/test_harness_versions.py
# Safe to rerun. PYTHON picks the interpreter, VENV the folder, TORCH_SPEC the torch build.
#
# The lowest versions are read from setup.cfg (`lm-eval[hf]>=X`), so the declaration and what CI exercises
# cannot drift apart. lm-eval 0.4.9 predates transformers 5 and datasets 4.1: they are capped here the way a
# research environment pinned to that release has them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-oldest}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
pip=("$VENV/bin/python" -m pip)

lowest() {  # the lower bound setup.cfg's install_requires declares for one distribution
    sed -nE "s/^ +$1(\[[a-z,]+\])?>=([0-9.]+).*/\2/p" setup.cfg | head -n 1
}
LM_EVAL_LOWEST=$(lowest lm-eval)
[ -n "$LM_EVAL_LOWEST" ] || { echo "setup.cfg declares no lm-eval lower bound" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# Keep git and ruff (which honours .gitignore files) out of the venv, as Python >= 3.13 venvs do.
[ -f "$VENV/.gitignore" ] || echo "*" >"$VENV/.gitignore"
"${pip[@]}" install -qq --upgrade pip
"${pip[@]}" install -qq "$TORCH_SPEC"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
{
    "${pip[@]}" list --format=freeze 2>/dev/null | grep -iE '^torch=='
    echo "lm-eval==$LM_EVAL_LOWEST"
    echo "transformers<5"
    echo "datasets<4.1"
} >"$constraints"
"${pip[@]}" install -qq --constraint "$constraints" "lm-eval[api]==$LM_EVAL_LOWEST" ".[test]" 2>&1 \
    | { grep -v "does not provide the extra" || true; } >&2
# The source tree as it is now, even when the version number did not change.
"${pip[@]}" install -qq --force-reinstall --no-deps .
"$VENV/bin/python" -c 'import importlib.metadata as m; print("lm-eval", m.version("lm-eval"), "transformers", m.version("transformers"), "ready in '"$VENV"'")' >&2
