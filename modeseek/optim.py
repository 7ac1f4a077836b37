"""The one optax pipeline every tier uses (after big_vision's `optax.py`):

    clip_by_global_norm → Adam/AdamW with a warmup + constant/cosine/linear schedule
    → optax.MultiSteps (gradient accumulation over `accumulation_steps` micro-batches).

Numeric arguments (learning rate, weight decay) may be traced values, so a sweep can vmap over
them; the structural ones (schedule, accumulation) are Python values.
"""

from __future__ import annotations

import optax

from modeseek._checks import check_positive

SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(learning_rate, *, schedule="constant", warmup_steps=0, total_steps=None):
    """Learning rate per optimizer step: linear warmup from 0, then the named decay to 0."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule != "constant" and not total_steps:
        raise ValueError(f"schedule={schedule!r} needs total_steps > 0")
    if schedule == "constant":
        if not warmup_steps:
            return learning_rate
        return optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup_steps),
             optax.constant_schedule(learning_rate)], [warmup_steps])
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        # Not optax.warmup_cosine_decay_schedule: it branches on the peak value in Python,
        # which fails when learning_rate is traced (vmapped sweeps).
        decay = optax.cosine_decay_schedule(learning_rate, decay_steps)
    else:
        decay = optax.linear_schedule(learning_rate, 0.0, decay_steps)
    if not warmup_steps:  # no warmup: step 0 already uses the peak rate
        return decay
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps])


def make_optimizer(*, learning_rate, schedule="constant", warmup_steps=0, total_steps=None,
                   max_grad_norm=None, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
                   accumulation_steps=1):
    """Build clip → Adam(W) with schedule → MultiSteps.

    Args:
      learning_rate: peak learning rate (float or traced scalar).
      schedule: "constant" | "cosine" | "linear", after `warmup_steps` of linear warmup.
      total_steps: optimizer updates in the run (needed by decaying schedules); with
        accumulation these count updates, not micro-batches.
      max_grad_norm: global-norm clip (None: no clipping).
      weight_decay: decoupled weight decay (AdamW); 0 gives plain Adam.
      accumulation_steps: micro-batches averaged per update (optax.MultiSteps); 1 disables it.
    """
    check_positive("learning_rate", learning_rate)
    if int(accumulation_steps) < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    lr = make_schedule(learning_rate, schedule=schedule, warmup_steps=warmup_steps,
                       total_steps=total_steps)
    parts = []
    if max_grad_norm is not None:
        check_positive("max_grad_norm", max_grad_norm)
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    tx = optax.chain(*parts)
    if accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(accumulation_steps))
    return tx
