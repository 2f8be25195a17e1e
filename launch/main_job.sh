#!/usr/bin/env bash
# Sets up (launch/setup.sh) and runs the main job: Fashion-MNIST (Debian's package), 50% of
# the training labels flipped by the paper's random Q*, the paper's CIFAR network with a learned
# noise layer Q. It prints the clean test error and the Q error and writes plots to
# runs/main/plots. Running it again resumes (or, once finished, just reports).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
venv="${NLNOISE_VENV:-.venv}"
"$venv/bin/nlnoise-train" --config=configs/fashion_mnist.py --workdir="${1:-runs/main}"
