#!/usr/bin/env bash
# Create .venv (if missing) and install the workbench with its test extras.
# TORCH_REQUIREMENT picks the torch build; the default is the CPU build this project is tested on.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# Torch first: a bare `torch` requirement with nothing installed pulls a multi-GB CUDA build.
python -m pip install --quiet "${TORCH_REQUIREMENT:-torch==2.13.0}"
python -m pip install --quiet -e ".[test]"
