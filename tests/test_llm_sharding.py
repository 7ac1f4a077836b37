"""Sharded train steps on 8 simulated CPU devices equal the single-device step.

The check runs in a subprocess that sets XLA_FLAGS before importing jax, so the rest of the
test session keeps one CPU device.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from llm_batches import random_pair_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2)]


def _child():
    """Compares what is invariant under a change of reduction order: the loss, the gradient at a
    tolerance scaled to its size, and one SGD step. (Adam's first step is lr·g/|g| per parameter,
    so a parameter whose gradient is ~0 can move by up to lr under float rounding alone: never
    compare Adam-stepped parameters across meshes.)"""
    import jax
    import optax

    import modeseek
    from llm import sharding as shd
    from llm import state as st
    from llm import steps
    from modeseek import decoder as dec

    config = dec.DecoderConfig.tiny(vocab_size=264)
    batch = random_pair_batch()
    learning_rate = 1e-2
    optimizer = optax.sgd(learning_rate)
    loss_fn = steps.make_offline_loss(config, "offline_dpo",
                                      steps.objective_hparams("offline_dpo", {}))
    grad_fn = jax.grad(lambda p, b, k: loss_fn(p, b, k)[0])

    def one_step(mesh):
        shardings, _ = st.param_shardings(config, mesh)
        params = st.init_params_sharded(jax.random.key(0), config, shardings)
        global_batch = shd.global_batch(batch, mesh)
        grads = st.jit_eval(grad_fn, mesh)(params, global_batch, jax.random.key(1))
        state_sh = st.state_shardings(optimizer, shardings, params, mesh)
        state = st.init_state(params, optimizer, state_sh)
        step = st.jit_train_step(modeseek.make_train_step(loss_fn, optimizer), state_sh, mesh)
        state, metrics = step(state, global_batch, jax.random.key(1))
        specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
        return (jax.device_get(metrics), jax.device_get(grads), jax.device_get(state.params),
                specs)

    assert len(jax.devices()) == 8
    ref_metrics, ref_grads, ref_params, _ = one_step(shd.make_mesh(devices=jax.devices()[:1]))
    grad_scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads))
    assert grad_scale > 0
    for sizes in MESHES:
        metrics, grads, params, specs = one_step(shd.make_mesh(*sizes))
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * grad_scale)
        # SGD moves every parameter by lr·g: the same bound, scaled by the step size.
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4 * learning_rate * grad_scale)
        if sizes[1] > 1:  # fsdp really shards the parameters
            assert any("fsdp" in s for s in specs), specs
        if sizes[2] > 1:
            assert any("tensor" in s for s in specs), specs
        print("ok", sizes, float(metrics["loss"]), flush=True)


def test_sharded_step_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == len(MESHES), proc.stdout


def test_mesh_and_rules():
    import jax

    from llm import sharding as shd

    mesh = shd.make_mesh(1, -1, 1)
    assert dict(mesh.shape) == {"data": 1, "fsdp": len(jax.devices()), "tensor": 1}
    with pytest.raises(ValueError, match="devices"):
        shd.make_mesh(3, 1, 1)
    spec, fallback = shd.logical_to_spec(("embed", "heads", "kv"), (48, 4, 12), mesh)
    assert fallback == [] and len(spec) == 3



def test_train_compiler_options_keep_the_step():
    """The XLA:CPU options of training steps (every dot through YNNPACK) change only reduction
    order: the loss, the gradient norm and one SGD step equal plain jax.jit's at tolerances
    scaled to the gradient (see _child for why SGD)."""
    import jax
    import optax

    import modeseek
    from llm import sharding as shd
    from llm import state as st
    from llm import steps
    from modeseek import decoder as dec

    assert st.train_compiler_options() == st.CPU_TRAIN_COMPILER_OPTIONS  # CI runs on CPU
    config = dec.DecoderConfig.tiny(vocab_size=264)
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    learning_rate = 1e-2
    optimizer = optax.sgd(learning_rate)
    loss_fn = steps.make_offline_loss(config, "offline_dpo",
                                      steps.objective_hparams("offline_dpo", {}))
    train_step = modeseek.make_train_step(loss_fn, optimizer)
    shardings, _ = st.param_shardings(config, mesh)
    init = lambda: st.init_params_sharded(jax.random.key(0), config, shardings)
    state_sh = st.state_shardings(optimizer, shardings, init(), mesh)
    batch = shd.global_batch(random_pair_batch(), mesh)

    def run(step):
        state = st.init_state(init(), optimizer, state_sh)  # the params are donated
        return jax.device_get(step(state, batch, jax.random.key(1)))

    (ours, m_ours), (plain, m_plain) = (run(st.jit_train_step(train_step, state_sh, mesh)),
                                        run(st.jit_sharded(train_step, mesh)))
    np.testing.assert_allclose(m_ours["loss"], m_plain["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_ours["grad_norm"], m_plain["grad_norm"], rtol=1e-4)
    scale = float(m_plain["grad_norm"])
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4 * learning_rate * scale)

if __name__ == "__main__":
    _child()
