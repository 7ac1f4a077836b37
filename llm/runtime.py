"""The one stage loop (nanodo's shape) and the pieces it shares: the optimizer from a stage
config, host-side metric reads with the NaN/inf guard, and SIGTERM-driven preemption.

    run_loop(cfg, stage_cfg, stage_dir, env, state=..., step_fn=..., num_steps=..., ...)

resume from the latest checkpoint → evaluate at step 0 → per step: `step_fn` (the stage kind's
jitted work and its batches) → NaN guard → evaluate when due → log → checkpoint when due or on
SIGTERM → save the final parameters and summary. SFT, reward-model, offline and on-policy
stages differ only in their `step_fn`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import jax
import numpy as np

import modeseek
from llm import checkpointing, logs, run_folder


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
    if stage_cfg.preempt_at_step == step:
        os.kill(os.getpid(), signal.SIGTERM)
    if ckpt.due(step) or preempt.requested:
        ckpt.save(step, *save_args)
    return preempt.requested


def close_all(*resources) -> None:
    """Close each resource in the order given (signal handler first, checkpointer last)."""
    for resource in resources:
        resource.close()


def check_finite(metrics: dict, step: int) -> None:
    """Raise NonFiniteError when loss or grad_norm is NaN/inf. Metrics stacked over the K
    gradient steps of loop step `step` name the gradient step (K·(step − 1) + i + 1)."""
    for name in ("loss", "grad_norm"):
        if name not in metrics:
            continue
        value = np.asarray(jax.device_get(metrics[name])).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(value))
        if bad.size:
            where = (f"step {step}" if value.size == 1 else
                     f"gradient step {value.size * (step - 1) + int(bad[0]) + 1} (iteration "
                     f"{step})")
            raise NonFiniteError(f"non-finite {name} ({value[bad[0]]}) at {where}; the run stops "
                                 "and the last good checkpoint is kept")


def host_metrics(metrics) -> dict:
    return {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}


def restore_latest_valid(ckpt, state, rng, iterator):
    """(step, (state, rng, extra)) of the newest checkpoint that restores, or (None, None).
    A damaged step is moved aside (`run_folder.quarantine_step_dir`, process 0) with a warning
    naming it and the step fallen back to; when none restores, RunFolderError lists them."""
    directory = os.fspath(ckpt.manager.directory)

    def quarantine(step):
        if jax.process_index() == 0:
            run_folder.quarantine_step_dir(directory, step)
        ckpt.manager.reload()

    step, restored = run_folder.latest_valid_checkpoint(
        ckpt.manager.all_steps(), lambda s: ckpt.restore(state, rng, iterator, step=s),
        quarantine=quarantine)
    if restored is not None and jax.process_index() == 0:
        print(f"resuming from checkpoint step {step} in {directory}", flush=True)
    return step, restored


def make_optimizer(stage_cfg, total_updates: int):
    """The stage's optimizer: config fields unpacked into `modeseek.make_optimizer`'s keywords."""
    return modeseek.make_optimizer(
        learning_rate=stage_cfg.learning_rate, schedule=stage_cfg.schedule,
        warmup_steps=stage_cfg.warmup_steps, total_steps=total_updates,
        max_grad_norm=stage_cfg.max_grad_norm, weight_decay=stage_cfg.weight_decay,
        accumulation_steps=stage_cfg.accumulation_steps)


def run_loop(cfg, stage_cfg, stage_dir: str, env, *, state, step_fn: Callable,
             num_steps: int, iterator, evaluate, resume: bool, extra: dict | None = None,
             bar_metric: str = "loss", on_start: Callable[[int], None] | None = None) -> dict:
    """The stage loop (module docstring). `step_fn(state, key, step, extra) -> (state,
    update_metrics (device; may be stacked over gradient steps), more metrics (host floats),
    extra)` does one step; key = fold_in(PRNGKey(cfg.seed), step). `extra` (JSON numbers, e.g.
    the adaptive KL coefficient) is checkpointed with the state and restored on resume.
    `on_start(step)` is called once the starting step is known (0, or the restored one).
    Returns the stage summary, or {"status": "preempted", "step": n} after a SIGTERM."""
    rng = jax.random.key(cfg.seed)
    ckpt = checkpointing.RunCheckpointer(os.path.join(stage_dir, "checkpoints"),
                                         every=cfg.checkpoint_every)
    extra, start = dict(extra or {}), 0
    if resume:
        step, restored = restore_latest_valid(ckpt, state, rng, iterator)
        if step is not None:
            state, rng, restored = restored
            start = int(restored.pop("step"))
            extra.update(restored)
    if on_start is not None:
        on_start(start)
    logger = logs.MetricsLogger(stage_dir, resume_step=start if start else None,
                                use_wandb=cfg.wandb, config=cfg.to_dict())
    preempt = Preemption()
    bar = logs.progress(num_steps, start, stage_cfg.name)
    status, metrics, step = "done", {}, start
    try:
        if start == 0 and evaluate is not None:
            logger.log(0, evaluate(state.params))
        for step in range(start + 1, num_steps + 1):
            state, update_metrics, more, extra = step_fn(
                state, jax.random.fold_in(rng, step - 1), step - 1, extra)
            check_finite(update_metrics, step)
            metrics = {**host_metrics(update_metrics), **more}
            if evaluate is not None and (step % cfg.eval.every == 0 or step == num_steps):
                metrics.update(evaluate(state.params))
            logger.log(step, metrics)
            bar.update(1)
            bar.set_postfix({bar_metric: f"{metrics[bar_metric]:.4f}"})
            if step_boundary(stage_cfg, ckpt, preempt, step, state, rng, iterator,
                             {"step": step, **extra}):
                status = "preempted"
                break
    finally:
        close_all(preempt, bar, logger, ckpt)
    if status == "preempted":
        return {"status": status, "step": step}
    return env.finish(stage_dir, state.params, metrics)
