"""Sharded train state and jitted, donated steps on a (data, fsdp, tensor) mesh.

    shardings = param_shardings(config, mesh, with_head=...)
    params    = init_params_sharded(key, config, shardings)           # or sharding.place_params
    opt       = modeseek.make_optimizer(...)
    state_sh  = state_shardings(opt, params, mesh)
    state     = init_state(params, opt, state_sh)                       # params are donated
    step      = jit_train_step(modeseek.make_train_step(loss_fn, opt), state_sh, mesh)
    state, metrics = step(state, global_batch, key)

The jitted step takes the state's buffers (`donate_argnums=0`), keeps every output in the
state's shardings and returns metrics as replicated device scalars: nothing returns to the
host inside the step. Activations follow the decoder's logical constraints through
`LOGICAL_RULES` (traced under `jax.set_mesh` + `flax.linen.logical_axis_rules`).
"""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import optax

import modeseek
from llm import sharding as shd
from modeseek import decoder as dec


def param_shardings(config: dec.DecoderConfig, mesh, *, with_head: bool = False):
    """(NamedShardings for the decoder params — or {"decoder", "head"} of a scalar model —,
    list of replicated fallback dimensions)."""
    axes = dec.param_axes(config)
    shapes = jax.eval_shape(functools.partial(dec.init_params, config=config), jax.random.key(0))
    if with_head:
        axes = {"decoder": axes, "head": dec.scalar_head_axes(config)}
        shapes = {"decoder": shapes,
                  "head": jax.eval_shape(functools.partial(dec.init_scalar_head, config=config),
                                         jax.random.key(0))}
    return shd.tree_shardings(axes, shapes, mesh)


def init_params_sharded(key, config: dec.DecoderConfig, shardings, *, with_head: bool = False):
    """Random init with every leaf created in its sharding (no full copy on one device)."""
    init = dec.init_scalar_model if with_head else dec.init_params
    return shd.init_sharded(functools.partial(init, config=config), shardings, key)


def state_shardings(optimizer: optax.GradientTransformation, params_shardings, params, mesh):
    """TrainState of shardings: optimizer moments follow their parameter, counters replicate."""
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_shardings = optax.tree_map_params(
        optimizer, lambda _, s: s, abstract_opt, params_shardings,
        transform_non_params=lambda _: shd.replicated(mesh))
    return modeseek.TrainState(params_shardings, opt_shardings, shd.replicated(mesh))


def init_state(params, optimizer, shardings) -> modeseek.TrainState:
    """Optimizer state built in place next to `params` (which are donated)."""
    init = functools.partial(modeseek.init_train_state, optimizer=optimizer)
    return jax.jit(init, out_shardings=shardings, donate_argnums=0)(params)


@contextlib.contextmanager
def mesh_context(mesh):
    """Mesh + logical rules active while tracing, so `with_logical_constraint` applies."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        yield


# every dot of a training step through YNNPACK on CPU (measured in modeseek.train)
CPU_TRAIN_COMPILER_OPTIONS = modeseek.CPU_TRAIN_COMPILER_OPTIONS
train_compiler_options = modeseek.train_compiler_options


def jit_sharded(fn, mesh, *, out_shardings=None, donate_argnums=(), compiler_options=None):
    """The one jit helper: jit(fn) with output shardings, donation and XLA options, traced and
    run under the mesh and logical rules (`mesh_context`). The jitted function is `.jitted`."""
    jitted = jax.jit(fn, out_shardings=out_shardings, donate_argnums=donate_argnums,
                     compiler_options=compiler_options)

    def run(*args):
        with mesh_context(mesh):
            return jitted(*args)

    run.jitted = jitted
    return run


def jit_train_step(train_step, shardings, mesh, *, donate: bool = True):
    """jit(train_step) with the state kept in `shardings` and donated, compiled with
    `train_compiler_options()`; metrics replicated.
    Serves any `(state, batch, key) -> (state, metrics)`, e.g. a whole on-policy update."""
    return jit_sharded(train_step, mesh, out_shardings=(shardings, shd.replicated(mesh)),
                       donate_argnums=(0,) if donate else (),
                       compiler_options=train_compiler_options())


def jit_eval(fn, mesh):
    """jit(fn) whose outputs are replicated (small per-batch results read on the host)."""
    return jit_sharded(fn, mesh, out_shardings=shd.replicated(mesh))
