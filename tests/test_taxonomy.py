"""The algorithm table: lookup, flags consistent with the objectives' gradients, and every
algorithm trains (finite loss and gradient) on a tabular softmax policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import modeseek as ms
from modeseek.taxonomy import taxonomy_table

P, N, A = 3, 5, 7


def test_unknown_algorithm_lists_known_names():
    with pytest.raises(ValueError, match="nope") as err:
        ms.get_algorithm("nope")
    for name in ms.ALGORITHMS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="offline_dpo"):
        ms.make_objective_loss("nope", lambda p, b: p, ms.DEFAULT_HPARAMS)


def test_table_records():
    assert ms.get_algorithm("offline_dpo") is ms.ALGORITHMS["offline_dpo"]
    for name, a in ms.ALGORITHMS.items():
        assert a.name == name
        assert set(a.needs) <= set(ms.DEFAULT_HPARAMS), name
        assert a.reuse >= 1
        if not a.on_policy:
            assert a.reuse == 1, name
    cells = {a.cell for a in ms.ALGORITHMS.values()}
    assert cells == {"on-policy / negative gradient", "on-policy / no negative gradient",
                     "offline / negative gradient", "offline / no negative gradient"}
    table = taxonomy_table()
    assert table.count("\n") == len(ms.ALGORITHMS) + 1
    for name in ms.ALGORITHMS:
        assert f"| {name} |" in table


def _tabular_batch(seed=0):
    rng = np.random.default_rng(seed)
    params = jnp.asarray(rng.normal(size=(P, A)), jnp.float32)
    actions = jnp.asarray(rng.integers(0, A, size=(P, N)))
    rewards = jnp.asarray(rng.normal(size=(P, N)), jnp.float32)  # distinct rewards
    ref_params = jnp.asarray(rng.normal(size=(P, A)), jnp.float32)
    return params, dict(actions=actions, rewards=rewards,
                        ref_logps=_logprob_fn(ref_params, dict(actions=actions)),
                        old_logps=_logprob_fn(params, dict(actions=actions)))


def _logprob_fn(params, batch):
    # one logits table per prompt: [P, A] → log π of each prompt's N sampled actions, [P, N]
    return jnp.take_along_axis(jax.nn.log_softmax(params, -1), batch["actions"], axis=-1)


@pytest.mark.parametrize("name", sorted(ms.ALGORITHMS))
def test_algorithm_trains_and_negative_gradient_flag(name):
    """Every algorithm: one train step on a tabular softmax policy gives a finite loss and
    gradient; its objective runs with only the hyperparameters it `needs`; and
    negative_gradient=True ⇔ gradient descent pushes some sample's log-prob down, i.e.
    ∂loss/∂log π(y_i) > 0 for some i (at π = π_old, distinct rewards)."""
    a = ms.get_algorithm(name)
    params, batch = _tabular_batch()
    tx = ms.make_optimizer(learning_rate=0.1)
    state = ms.init_train_state(params, tx)
    step = ms.make_algorithm_train_step(name, _logprob_fn, ms.DEFAULT_HPARAMS, tx)
    needs_only = {k: ms.DEFAULT_HPARAMS[k] for k in a.needs}

    @jax.jit
    def run(state, batch):
        new_state, metrics = step(state, batch, jax.random.key(0))
        g = jax.grad(a.objective)(batch["old_logps"], batch, ms.DEFAULT_HPARAMS)
        return new_state, metrics, g, a.objective(batch["old_logps"], batch, needs_only)

    new_state, metrics, g, val_needs_only = run(state, batch)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["grad_norm"]) > 0
    assert np.all(np.isfinite(np.asarray(new_state.params)))
    assert int(new_state.step) == 1
    assert not np.allclose(new_state.params, params)
    assert np.isfinite(float(val_needs_only))
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    assert bool(np.any(g > 1e-7)) == a.negative_gradient, (name, g)
