#!/usr/bin/env bash
# N processes on one machine talking through jax.distributed on 127.0.0.1 — the multi-host code
# path without a cluster (each process gets an equal share of the local devices; on CPU use
# XLA_FLAGS=--xla_force_host_platform_device_count=K for K devices per process).
#
#   NUM_PROCESSES=2 ./launch/local_multiprocess.sh configs/llm.py:tiny /tmp/runs/tiny2
set -euo pipefail
CONFIG="${1:-configs/llm.py:tiny}"
WORKDIR="${2:?workdir}"
shift 2 || true
N="${NUM_PROCESSES:-2}"
PORT="${MODESEEK_PORT:-12356}"
pids=()
for ((i = 0; i < N; i++)); do
  MODESEEK_COORDINATOR="127.0.0.1:$PORT" MODESEEK_NUM_PROCESSES="$N" MODESEEK_PROCESS_ID="$i" \
    .venv/bin/python -m llm --config "$CONFIG" --workdir "$WORKDIR" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
