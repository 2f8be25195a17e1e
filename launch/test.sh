#!/usr/bin/env bash
# Sets up (launch/setup.sh) and runs the whole test suite: lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
NLNOISE_EXTRAS="${NLNOISE_EXTRAS:-test,notebook}" bash launch/setup.sh
venv="${NLNOISE_VENV:-.venv}"
"$venv/bin/ruff" check .
"$venv/bin/python" -m pytest -q "$@"
