#!/usr/bin/env bash
# Run `python -m llm` on every worker of a Cloud TPU pod slice (one process per host).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b CONFIG=configs/llm.py:pythia_alpacafarm \
#   WORKDIR=gs://my-bucket/runs/pythia ./launch/tpu_pod.sh [extra flags, e.g. --resume]
#
# jax.distributed finds the coordinator and the process ids itself on TPU pods
# (--config.distributed.auto=True), so every worker runs the same command. The repo must be
# present at $REPO_DIR on every worker (e.g. `gcloud ... scp --worker=all` or a git clone in the
# VM's startup script) with its virtual environment at $REPO_DIR/.venv. WORKDIR must be visible
# to all hosts (a GCS bucket or a shared filesystem): orbax writes each host's shards there.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CONFIG="${CONFIG:-configs/llm.py:pythia_alpacafarm}"
WORKDIR="${WORKDIR:?set WORKDIR (shared by all hosts)}"
REPO_DIR="${REPO_DIR:-\$HOME/modeseek}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
  --command="cd $REPO_DIR && .venv/bin/python -m llm --config $CONFIG --workdir $WORKDIR \
    --config.distributed.auto=True $*"
