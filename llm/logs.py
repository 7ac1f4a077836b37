"""Run logging: metrics.jsonl, TensorBoard event files (tensorboardX, no TensorFlow), optional
wandb, a progress bar, and the FLOP counts behind tokens/s and model-FLOPs utilisation.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step (`step` plus
float metrics); on `--resume` lines past the restored step are dropped first, so the file of
a resumed run equals the uninterrupted run's.

FLOPs (Kaplan et al. / PaLM appendix B convention, matmuls only):
    forward  = 2·N·tokens + 2·layers·seq·embed·tokens   (attention scores and values, causal
                                                         masking not subtracted)
    update   = 3 × forward (forward + backward)
so MFU = update FLOPs / (seconds × devices × peak FLOP/s per device).
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax

from modeseek import decoder as dec

# dense bf16 peak FLOP/s per device (no sparsity); CPU has no meaningful peak
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


def peak_flops_per_device(device=None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def forward_flops(config: dec.DecoderConfig, tokens: int, seq_len: int) -> float:
    """Matmul FLOPs of one forward pass over `tokens` tokens in sequences of `seq_len`."""
    # an untied input embedding is a lookup, not a matmul; a tied one is the output matmul
    lookup = 0 if config.tied_embeddings else config.vocab_size * config.embed_dim
    n = dec.num_params(config) - lookup
    attention = 2 * config.num_layers * seq_len * config.num_heads * config.head_dim
    return 2.0 * n * tokens + 2.0 * attention * tokens


def update_flops(config: dec.DecoderConfig, tokens: int, seq_len: int) -> float:
    return 3.0 * forward_flops(config, tokens, seq_len)


def mfu(flops: float, seconds: float, peak: float | None) -> float:
    if not peak or seconds <= 0:
        return math.nan
    return flops / (seconds * jax.device_count() * peak)


class MetricsLogger:
    """Appends metrics to <run>/metrics.jsonl and TensorBoard (and wandb when asked)."""

    def __init__(self, run_dir: str, *, resume_step: int | None = None, use_wandb: bool = False,
                 wandb_project: str = "modeseek", config: dict | None = None):
        self.active = jax.process_index() == 0
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = self.wandb = None
        if not self.active:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        if use_wandb:
            try:
                import wandb
            except ImportError:
                print("wandb requested but not installed; logging to files only", file=sys.stderr)
            else:
                self.wandb = wandb.init(project=wandb_project, config=config or {},
                                        dir=run_dir, resume="allow")

    def _truncate_after(self, step: int | None) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        if step is not None:
            lines = [line for line in lines if json.loads(line)["step"] <= step]
        else:
            lines = []
        with open(self.path, "w") as f:
            f.writelines(lines)

    def log(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for name, value in row.items():
            if name != "step" and math.isfinite(value):
                self.tb.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def progress(total: int, initial: int, desc: str):
    """tqdm bar on process 0 when stderr is a terminal (a no-op object otherwise)."""
    from tqdm import tqdm

    disable = jax.process_index() != 0 or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True)
