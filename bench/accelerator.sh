#!/usr/bin/env bash
# nlnoise on one NVIDIA GPU, measured in one table within 8 minutes (issue 18, item 4).
#
#   bash bench/accelerator.sh [--dry_run] [--venv DIR]
#
# On a Linux machine with an NVIDIA GPU, its driver and the package registries: checks that
# nvidia-smi sees a GPU (and stops at once if not), installs nlnoise with jax[cuda12] into
# DIR/jax and PyTorch (CUDA build) into DIR/torch (default DIR: ~/.cache/nlnoise-accelerator;
# two venvs, so that the two frameworks' CUDA libraries never have to agree), then runs
# bench/accelerator.py with whatever is left of the 8 minutes. The table goes to stdout and
# bench/results/accelerator.json. --dry_run prints the plan (commands and measurements) and
# exits 0 on any machine. Not part of the test suite (tests/test_launch.py runs the dry run).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
budget="${NLNOISE_ACCELERATOR_BUDGET:-480}"  # seconds for everything, installs included
venv="${NLNOISE_ACCELERATOR_VENV:-$HOME/.cache/nlnoise-accelerator}"
python="${PYTHON:-python3}"
jax_spec='jax[cuda12]==0.10.2'
torch_spec='torch==2.13.0'
dry_run="${DRY_RUN:-0}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run|--dry-run) dry_run=1 ;;
    --venv) venv="${2:?--venv needs a directory}"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "accelerator.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

install_jax=("$venv/jax/bin/pip" install -q -c "$repo/requirements/constraints.txt"
             -e "$repo" "$jax_spec")
install_torch=("$venv/torch/bin/pip" install -q "$torch_spec" numpy)
# JAX would otherwise take 75% of the GPU's memory at start, leaving PyTorch's worker none.
run=(env XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "SECONDS_LEFT" "$venv/jax/bin/python"
     "$repo/bench/accelerator.py" --torch-python "$venv/torch/bin/python"
     --budget "SECONDS_LEFT_MINUS_20")

if [ "$dry_run" = 1 ]; then
  echo "Plan (dry run: nothing is checked, installed or measured), $budget s in all:"
  echo "1. check the GPU: nvidia-smi -L must list at least one GPU, else stop"
  echo "2. $python -m venv $venv/jax && $(printf '%q ' "${install_jax[@]}")"
  echo "3. $python -m venv $venv/torch && $(printf '%q ' "${install_torch[@]}")"
  echo "4. $(printf '%q ' "${run[@]}")"
  echo "   measuring, in order:"
  "$python" "$repo/bench/accelerator.py" --plan | sed 's/^/     /'
  exit 0
fi

die() { echo "accelerator.sh: $*" >&2; exit 1; }
command -v nvidia-smi > /dev/null \
  || die "nvidia-smi not found: this benchmark needs an NVIDIA GPU with its driver installed."
gpus="$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ' || true)"
[ "$gpus" -ge 1 ] || die "nvidia-smi lists no GPU (nvidia-smi -L printed none); nothing to measure."
echo "GPU: $(nvidia-smi -L | head -n 1)"

start=$SECONDS
[ -x "$venv/jax/bin/python" ] || "$python" -m venv "$venv/jax"
"${install_jax[@]}"
[ -x "$venv/torch/bin/python" ] || "$python" -m venv "$venv/torch"
"${install_torch[@]}"
left=$((budget - (SECONDS - start)))
[ "$left" -gt 60 ] || die "installing took $((SECONDS - start)) s of the $budget s budget; run again (the venvs are kept)."
echo "installed in $((SECONDS - start)) s; measuring for at most $left s"
cd "$repo"
# The measurements stop starting new items 20 s before timeout would end them.
run=("${run[@]/#SECONDS_LEFT_MINUS_20/$((left - 20))}")
run=("${run[@]/#SECONDS_LEFT/$left}")
"${run[@]}"
