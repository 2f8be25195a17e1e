#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: the Fashion-MNIST system package, a
# virtualenv in .venv (override with NLNOISE_VENV) and nlnoise installed into it with pinned
# versions. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq dataset-fashion-mnist
fi

venv="${NLNOISE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
extras="${NLNOISE_EXTRAS:-test}"
"$venv/bin/pip" install -q -c requirements/constraints.txt -e ".[$extras]"
