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
    import jax

    import modeseek
    from llm import sharding as shd
    from llm import state as st
    from llm import steps
    from modeseek import decoder as dec

    config = dec.DecoderConfig.tiny(vocab_size=264)
    batch = random_pair_batch()
    optimizer = modeseek.make_optimizer(learning_rate=1e-2, max_grad_norm=1.0)
    loss_fn = steps.make_offline_loss(config, "offline_dpo",
                                      steps.objective_hparams("offline_dpo", {}))

    def one_step(mesh):
        shardings, _ = st.param_shardings(config, mesh)
        params = st.init_params_sharded(jax.random.key(0), config, shardings)
        state_sh = st.state_shardings(optimizer, shardings, params, mesh)
        state = st.init_state(params, optimizer, state_sh)
        step = st.jit_train_step(modeseek.make_train_step(loss_fn, optimizer), state_sh, mesh)
        state, metrics = step(state, shd.global_batch(batch, mesh), jax.random.key(1))
        specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
        return jax.device_get(metrics), jax.device_get(state.params), specs

    assert len(jax.devices()) == 8
    ref_metrics, ref_params, _ = one_step(shd.make_mesh(devices=jax.devices()[:1]))
    for sizes in MESHES:
        metrics, params, specs = one_step(shd.make_mesh(*sizes))
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
            np.testing.assert_allclose(a, b, atol=2e-5)
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


if __name__ == "__main__":
    _child()
