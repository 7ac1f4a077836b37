#!/usr/bin/env bash
# Multi-GPU / multi-node run under SLURM without torchrun: one process per node, each driving
# all of its node's GPUs; jax.distributed connects the processes.
#
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh \
#       configs/llm.py:mistral_ultrafeedback /shared/runs/mistral [--config.FIELD=VALUE ...]
#
# A first submission starts the run; a requeued one (preemption, time limit) finds the run's
# config.json in WORKDIR and resumes it (`--resume` compares the configs).
#
#SBATCH --job-name=modeseek-llm
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=TERM@120          # SIGTERM 2 min before the time limit: checkpoint and exit
#SBATCH --requeue                  # after preemption the requeued job resumes (--resume below)
set -euo pipefail
CONFIG="${1:-configs/llm.py:pythia_alpacafarm}"
WORKDIR="${2:?workdir on a filesystem shared by all nodes}"
shift 2 || true
PORT="${MODESEEK_PORT:-12355}"
RESUME=""
if [ -f "$WORKDIR/config.json" ]; then RESUME="--resume"; fi
COORDINATOR_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"

# each task exports its own rank; the coordinator listens on the first node only
srun --kill-on-bad-exit=1 bash -c "
  export MODESEEK_COORDINATOR=${COORDINATOR_HOST}:${PORT}
  export MODESEEK_NUM_PROCESSES=\$SLURM_NTASKS
  export MODESEEK_PROCESS_ID=\$SLURM_PROCID
  exec .venv/bin/python -m llm --config $CONFIG --workdir $WORKDIR $RESUME $*
"
