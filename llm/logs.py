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
from etils import epath

from llm import run_folder
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
    """Appends metrics to <run>/metrics.jsonl and TensorBoard (and wandb when asked).

    Paths go through `etils.epath`. On an object store (`gs://...`, no appends) the file is
    rewritten whole, atomically, at each `log`; TensorBoard events (tensorboardX writes local
    files) and wandb's folder then stay off: metrics.jsonl is the record."""

    def __init__(self, run_dir: str, *, resume_step: int | None = None, use_wandb: bool = False,
                 wandb_project: str = "modeseek", config: dict | None = None):
        self.active = jax.process_index() == 0
        self.path = epath.Path(run_dir) / "metrics.jsonl"
        self.remote = run_folder.is_uri(run_dir)
        self.tb = self.wandb = None
        self._lines: list[str] = []
        if not self.active:
            return
        epath.Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if not self.remote:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        if use_wandb:
            try:
                import wandb
            except ImportError:
                print("wandb requested but not installed; logging to files only", file=sys.stderr)
            else:
                self.wandb = wandb.init(project=wandb_project, config=config or {},
                                        dir=None if self.remote else run_dir, resume="allow")

    def _truncate_after(self, step: int | None) -> None:
        if not self.path.exists():
            return
        lines = [line + "\n" for line in self.path.read_text().splitlines() if line.strip()]
        if step is not None:
            lines = [line for line in lines if json.loads(line)["step"] <= step]
        else:
            lines = []
        self._lines = lines
        run_folder.atomic_write_text(self.path, "".join(lines))

    def log(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        line = json.dumps(row) + "\n"
        if self.remote:
            self._lines.append(line)
            run_folder.atomic_write_text(self.path, "".join(self._lines))
        else:
            with self.path.open("a") as f:
                f.write(line)
        if self.tb is not None:
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
    path = epath.Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress(total: int, initial: int, desc: str):
    """tqdm bar on process 0 when stderr is a terminal (a no-op object otherwise)."""
    from tqdm import tqdm

    disable = jax.process_index() != 0 or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True)
