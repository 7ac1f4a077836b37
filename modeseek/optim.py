"""The one optax pipeline every tier uses (after big_vision's `optax.py`):

    clip_by_global_norm → Adam/AdamW with a warmup + constant/cosine/linear schedule
    → optax.MultiSteps (gradient accumulation over `accumulation_steps` micro-batches).

Numeric arguments (learning rate, weight decay) may be traced values, so a sweep can vmap over
them; the structural ones (schedule, accumulation) are Python values.

`fused_adam` is plain Adam (constant learning rate, no clipping) as ONE pass over parameters,
gradients and moments, for small models where the optimizer's memory traffic is the cost.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
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


class FusedAdamState(NamedTuple):
    count: jax.Array  # int32 updates so far
    mu: optax.Updates
    nu: optax.Updates


def fused_adam(learning_rate, *, b1=0.9, b2=0.999, eps=1e-8) -> optax.GradientTransformation:
    """Adam (Kingma & Ba) with a constant (possibly traced) learning rate η, one fused pass:

        m ← b1·m + (1−b1)·g,   v ← b2·v + (1−b2)·g²,   t ← t + 1,
        update = −η · (m / (1−b1^t)) / (sqrt(v / (1−b2^t)) + eps)

    — `optax.adam(η)`'s numbers (eps outside the square root), computed per parameter leaf in
    one expression so XLA reads g, m, v once and writes m, v and the update once.
    """
    check_positive("learning_rate", learning_rate)

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return FusedAdamState(jnp.zeros((), jnp.int32), zeros, zeros)

    def update(grads, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t

        def leaf(g, m, v):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            return -learning_rate * (m / c1) / (jnp.sqrt(v / c2) + eps), m, v

        out = jax.tree.map(leaf, grads, state.mu, state.nu)
        outer = jax.tree.structure(grads)
        updates, mu, nu = jax.tree.transpose(outer, jax.tree.structure((0, 0, 0)), out)
        return updates, FusedAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)
