#!/usr/bin/env bash
# Create ./.venv-lmms: esc-guard-tasks (non-editable, with its test extra) next to lmms-eval 0.7.3 on the
# CPU build of torch, for the tests marked `lmms`:
#   scripts/setup_lmms.sh && .venv-lmms/bin/pytest -m lmms tests/test_lmms_eval.py
# Safe to rerun. PYTHON picks the interpreter (>= 3.10), VENV the folder, TORCH_SPEC the torch build.
#
# Why not `pip install lmms-eval`: it requires torchvision, which pulls a CUDA torch (several GB), and the
# PyPI torchvision is CUDA-linked: next to a CPU torch it fails to import and takes transformers down with
# it. So lmms-eval goes in with --no-deps, then its own requirement list (read from its metadata) minus
# torchvision and timm (timm without torchvision breaks transformers' auto-model mapping on 4.57), plus
# decord (imported by some lmms-eval model wrappers) and filelock<4 (lmms-eval 0.7.3 imports filelock._api).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-lmms}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
LMMS_EVAL_VERSION=0.7.3
py="$VENV/bin/python"
pip=("$py" -m pip)

# pip reports lmms-eval's torchvision/timm requirements as unmet after every later install: that is the
# point of this recipe, so exactly those lines are dropped; anything else pip prints still shows.
install() {
    "${pip[@]}" install -qq "$@" 2>&1 | {
        grep -vE "^(ERROR: pip's dependency resolver does not currently take into account all the packages|lmms-eval [^ ]+ requires (torchvision|timm)[ >=<0-9.,]*, which is not installed)" || true
    } >&2
}

[ -x "$py" ] || "$PYTHON" -m venv "$VENV"
# Keep git and ruff (which honours .gitignore files) out of the venv, as Python >= 3.13 venvs do.
[ -f "$VENV/.gitignore" ] || echo "*" >"$VENV/.gitignore"
install --upgrade pip
# torch first (the CPU build), then pin exactly that build for every later step.
install "$TORCH_SPEC"
constraints=$(mktemp)
requirements=$(mktemp)
trap 'rm -f "$constraints" "$requirements"' EXIT
"${pip[@]}" list --format=freeze 2>/dev/null | grep -iE '^torch==' >"$constraints"
echo "filelock<4" >>"$constraints"

install --no-deps "lmms-eval==$LMMS_EVAL_VERSION"
"$py" - "$requirements" <<'EOF'
import importlib.metadata as metadata
import re
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv has only pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement

SKIP = {"torchvision", "timm"}  # CUDA-linked on PyPI / breaks transformers without torchvision
wanted = []
for text in metadata.requires("lmms-eval") or []:
    requirement = Requirement(text)
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue  # an extra's requirement, or another platform's
    if re.sub(r"[-_.]+", "-", requirement.name).lower() in SKIP:
        continue
    wanted.append(str(requirement))
with open(sys.argv[1], "w") as handle:
    handle.write("\n".join(sorted(set(wanted)) + ["decord", "filelock<4", ""]))
EOF
install --constraint "$constraints" --requirement "$requirements"
install --constraint "$constraints" ".[test]"
# The source tree as it is now, even when the version number did not change.
install --force-reinstall --no-deps .

# Nothing above should bring these, but if a future dependency does, they must go (see the top).
installed=$("${pip[@]}" list --format=freeze 2>/dev/null | cut -d= -f1 | tr '[:upper:]' '[:lower:]')
remove=()
for name in torchvision torchaudio torchcodec timm triton; do
    if grep -qx "$name" <<<"$installed"; then remove+=("$name"); fi
done
if [ "${#remove[@]}" -gt 0 ]; then "${pip[@]}" uninstall -qq --yes "${remove[@]}"; fi

"$py" -c 'import importlib.metadata as m, lmms_eval, torch; print("lmms-eval", m.version("lmms-eval"), "torch", torch.__version__, "ready in '"$VENV"'")' >&2
