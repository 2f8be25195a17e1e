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
# The repository URL is $REPO_URL, else this clone's origin.
#
# --dry_run (anywhere in the arguments) or DRY_RUN=1 prints the gcloud command and the script
# every worker would run, with the config, commit and workdir filled in, and calls nothing.
set -euo pipefail
usage="usage: tpu_pod.sh CONFIG[:VARIANT] RUN_NAME [--config.key=value ...] [--dry_run]"
dry_run="${DRY_RUN:-0}"
args=()
for a in "$@"; do
  case "$a" in
    --dry_run|--dry-run) dry_run=1 ;;
    *) args+=("$a") ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"
: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
: "${BUCKET:?set BUCKET to a gs:// bucket for data and runs}"
config="${1:?$usage}"
name="${2:?$usage}"
shift 2
repo_url="${REPO_URL:-$(git config --get remote.origin.url || true)}"
if [ -z "$repo_url" ]; then
  echo "tpu_pod.sh: this clone has no origin remote; set REPO_URL to the repository's URL." >&2
  exit 2
fi
commit="$(git rev-parse HEAD)"
extra="$*"

remote="
set -euo pipefail
if [ ! -d nlnoise ]; then git clone '$repo_url' nlnoise; fi
cd nlnoise && git fetch -q origin && git checkout -q '$commit'
python3 -m venv .venv
.venv/bin/pip install -q -c requirements/constraints.txt -e . 'jax[tpu]==0.10.2' \\
  -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
nohup .venv/bin/nlnoise-train --distributed --config='$config' \\
  --workdir='$BUCKET/runs/$name' --config.dataset.data_dir='$BUCKET/tfds' \\
  --config.progress_bar=False $extra > ~/nlnoise-$name.log 2>&1 &
echo started on \$(hostname)
"
ssh=(gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all)

if [ "$dry_run" = 1 ]; then
  echo "Dry run: nothing is sent. On every worker of $TPU ($ZONE), this would run"
  echo "  $(printf '%q ' "${ssh[@]}")--command=\"<the script below>\""
  echo "--- script sent to every worker ---"
  printf '%s' "${remote#$'\n'}"
  echo "--- end ---"
  exit 0
fi
"${ssh[@]}" --command="$remote"
echo "Logs: gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=0 --command='tail -f ~/nlnoise-$name.log'"
