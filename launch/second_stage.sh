#!/usr/bin/env bash
# The second stage of docs/results.md ("Beyond the paper"): audits every learned cell of the
# fashion_memorise sweep in-sample at its early-stopped parameters (no clean label is used) into
# ROOT/fashion_memorise_audit/<cell>, then trains the fashion_beyond sweep, whose second-stage
# cells read the relabelled and pruned label files those audits wrote. Resumable: a finished
# audit is rewritten identically, finished cells are read back.
#
#   bash launch/second_stage.sh [ROOT]        # ROOT: the sweeps' --root (default runs/sweeps)
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-runs/sweeps}"
venv="${NLNOISE_VENV:-.venv}"
for cell in "$root"/fashion_memorise/*__model-learned; do
  [ -f "$cell/summary.json" ] || { echo "second_stage: $cell has not finished; run nlnoise-sweep --grid=fashion_memorise first." >&2; exit 2; }
  "$venv/bin/nlnoise-audit" --workdir="$cell" --out="$root/fashion_memorise_audit/$(basename "$cell")" --params=best --noprogress
done
"$venv/bin/nlnoise-sweep" --grid=fashion_beyond --root="$root"
