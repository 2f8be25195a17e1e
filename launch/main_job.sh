#!/usr/bin/env bash
# Sets up (launch/setup.sh) and runs the main job: Fashion-MNIST (Debian's package), 50% of
# the training labels flipped by the paper's random Q*, the paper's CIFAR network with a learned
# noise layer Q, 3k of the 30k training images held out with their noisy labels for label-free
# early stopping. It prints the clean test error and the Q error, writes plots to
# runs/main/plots, then audits the run: the noise matrix and the likely-wrong labels go to
# runs/main-audit (q.png, label_issues.csv, issues.png, health.md). Running it again resumes
# (or, once finished, just reports).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
venv="${NLNOISE_VENV:-.venv}"
run="${1:-runs/main}"
"$venv/bin/nlnoise-train" --config=configs/fashion_mnist.py --workdir="$run"
"$venv/bin/nlnoise-audit" --workdir="$run" --out="$run-audit"
