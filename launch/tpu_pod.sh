#!/usr/bin/env bash
# Set up nlnoise on every worker of a TPU VM pod slice and start the same run on all of them.
#
#   TPU=my-pod ZONE=us-central2-b BUCKET=gs://my-bucket \
#     bash launch/tpu_pod.sh configs/imagenet_alexnet.py:noise=0.5,model=learned run1 [--config.k=v ...]
#
# Every worker clones this repository at the same commit, installs nlnoise with pinned versions
# plus jax[tpu], and runs nlnoise-train --distributed, which calls jax.distributed.initialize()
# (the TPU runtime provides the coordinator). Checkpoints, metrics and plots go to
# $BUCKET/runs/<name>; running the same command again resumes from the newest checkpoint.
# Data: prepare imagenet2012 once with `tfds build imagenet2012 --manual_dir=... \
#   --data_dir=$BUCKET/tfds` (see docs/data.md); this script points the run at it.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
: "${BUCKET:?set BUCKET to a gs:// bucket for data and runs}"
config="${1:?usage: tpu_pod.sh CONFIG[:VARIANT] RUN_NAME [--config.key=value ...]}"
name="${2:?usage: tpu_pod.sh CONFIG[:VARIANT] RUN_NAME [--config.key=value ...]}"
shift 2
repo_url="${REPO_URL:-$(git config --get remote.origin.url)}"
commit="$(git rev-parse HEAD)"
extra="$*"

gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
set -euo pipefail
if [ ! -d nlnoise ]; then git clone '$repo_url' nlnoise; fi
cd nlnoise && git fetch -q origin && git checkout -q '$commit'
python3 -m venv .venv
.venv/bin/pip install -q -c requirements/constraints.txt -e . 'jax[tpu]==0.10.2' \
  -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
nohup .venv/bin/nlnoise-train --distributed --config='$config' \
  --workdir='$BUCKET/runs/$name' --config.dataset.data_dir='$BUCKET/tfds' \
  --config.progress_bar=False $extra > ~/nlnoise-$name.log 2>&1 &
echo started on \$(hostname)
"
echo "Logs: gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=0 --command='tail -f ~/nlnoise-$name.log'"
