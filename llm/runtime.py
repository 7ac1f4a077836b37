"""Pieces every stage loop shares: the optimizer from a stage config, host-side metric reads
with the NaN/inf guard, and SIGTERM-driven preemption."""

from __future__ import annotations

import os
import signal

import jax
import numpy as np

import modeseek


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


class Preemption:
    """SIGTERM → `requested`; the loop checkpoints and returns at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        del signum, frame
        self.requested = True

    def close(self):
        signal.signal(signal.SIGTERM, self._previous)


def step_boundary(stage_cfg, ckpt, preempt: Preemption, step: int, *save_args) -> bool:
    """End of step `step` (1-based count of finished steps): checkpoint when due or when a
    SIGTERM arrived; True when the loop must stop. `preempt_at_step` in the stage config sends
    a real SIGTERM at that step (the kill-and-resume tests)."""
    if stage_cfg.get("preempt_at_step") == step:
        os.kill(os.getpid(), signal.SIGTERM)
    if ckpt.due(step) or preempt.requested:
        ckpt.save(step, *save_args)
    return preempt.requested


def close_all(*resources) -> None:
    """Close each resource in the order given (signal handler first, checkpointer last)."""
    for resource in resources:
        resource.close()


def check_finite(metrics: dict, step: int) -> None:
    for name in ("loss", "grad_norm"):
        value = np.asarray(metrics.get(name, 0.0))
        if not np.all(np.isfinite(value)):
            raise NonFiniteError(f"non-finite {name} ({value}) at step {step}; the run stops and "
                                 "the last good checkpoint is kept")


def host_metrics(metrics) -> dict:
    return {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}


def make_optimizer(stage_cfg, total_updates: int):
    return modeseek.make_optimizer(
        learning_rate=stage_cfg.learning_rate, schedule=stage_cfg.get("schedule", "constant"),
        warmup_steps=stage_cfg.get("warmup_steps", 0), total_steps=total_updates,
        max_grad_norm=stage_cfg.get("max_grad_norm", 1.0),
        weight_decay=stage_cfg.get("weight_decay", 0.0),
        accumulation_steps=stage_cfg.get("accumulation_steps", 1))
