#!/usr/bin/env bash
# Sets up (launch/setup.sh) and runs the main job.
# Until the training system lands, the main job is the core's end-to-end demonstration:
# 50% label flips from the paper's random Q*, plain softmax vs learned Q vs true Q.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
venv="${NLNOISE_VENV:-.venv}"
"$venv/bin/python" -m pytest -q -s tests/test_method.py
