"""The train-step factory shared by every tier.

    train_step(state, batch, key) -> (state, metrics)

is a pure function: no jit, donation or sharding here (drivers add those; notebooks call it
undonated). `state` is a small pytree (params, opt_state, step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from modeseek.taxonomy import get_algorithm

# XLA:CPU hands every dot of a training program to YNNPACK, not only those it fuses by default.
# Measured (benchmarks/README.md): SmolLM2-135M's forward + backward + AdamW step 21.3 → 18.5 s
# with gradients within 1e-4 of the default build's; the synthetic study's vmapped 48-dim
# decoder chunk 4.0 → 3.6 s (on-policy DPO) and 9.0 → 5.4–7.6 s (PPO). Not for the bandits'
# MLP, where it cost ≈ 20% more CPU.
CPU_TRAIN_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def train_compiler_options() -> dict:
    """XLA options for jitting transformer training programs on the default backend: every
    dot through YNNPACK on CPU, {} elsewhere. `jax.jit(fn, compiler_options=...)`."""
    return dict(CPU_TRAIN_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


class TrainState(NamedTuple):
    """The train step's state: parameters, optimizer state and the step count."""

    params: Any
    opt_state: Any
    step: jax.Array


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """TrainState(params, optimizer.init(params), step 0)."""
    return TrainState(params=params, opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32))


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """Wrap `loss_fn(params, batch, key) -> (loss, metrics)` into a pure train step.

    The step's metrics are the loss function's plus `loss` and `grad_norm` (global L2 norm of
    the gradient before clipping).
    """

    def train_step(state: TrainState, batch, key):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step


def make_objective_loss(algorithm: str, logprob_fn: Callable,
                        hparams: Mapping[str, Any]) -> Callable:
    """loss_fn(params, batch, key) for a named algorithm of the taxonomy.

    Args:
      algorithm: a name from `modeseek.ALGORITHMS` (unknown names raise, listing the known).
      logprob_fn: (params, batch) -> [P, N] sequence log-probs of `batch`'s samples.
      hparams: numeric hyperparameters for the objective (see `modeseek.objectives`).
    """
    objective = get_algorithm(algorithm).objective

    def loss_fn(params, batch, key):
        del key
        logps = logprob_fn(params, batch)
        return objective(logps, batch, hparams), {}

    return loss_fn


def make_algorithm_train_step(algorithm: str, logprob_fn: Callable, hparams: Mapping[str, Any],
                              optimizer: optax.GradientTransformation) -> Callable:
    """`make_train_step` with the loss chosen by algorithm name."""
    return make_train_step(make_objective_loss(algorithm, logprob_fn, hparams), optimizer)
