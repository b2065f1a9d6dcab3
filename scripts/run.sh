#!/usr/bin/env bash
# Set up, then run the main job: fine-tune on the bundled SciFact sample and compare.
# Extra arguments go to `workbench train` (see `workbench train --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
workbench train "$@"
