"""Exact infinite-data optima of Pref-FT, offline Best-of-N and RWR (bandits/ceilings.py):
hand-computed values, and brute force over every N-tuple of samples with the weights taken
from the gradient of the objectives the study actually trains (modeseek.objectives)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import modeseek
from bandits import ceilings, env

HP = dict(modeseek.DEFAULT_HPARAMS, rwr_beta=0.7, weight_clip=3.0, threshold=0.0)


def _brute_force(algorithm, ref, rewards, n, hparams, *, undo_pair_normaliser=False):
    """π(a) ∝ Σ_tuples P(tuple) Σ_i w_i 1{y_i = a}, w = −∂loss/∂log π(y_i) for one prompt."""
    objective = modeseek.get_algorithm(algorithm).objective
    grad = jax.jit(jax.grad(lambda logps, batch: objective(logps, batch, hparams)))
    pi = np.zeros(len(ref))
    for tup in itertools.product(range(len(ref)), repeat=n):
        actions = np.array(tup)
        r = jnp.asarray(rewards[actions][None], jnp.float32)
        batch = {"rewards": r, "ref_logps": jnp.zeros_like(r), "old_logps": jnp.zeros_like(r)}
        w = -np.asarray(grad(jnp.zeros_like(r), batch), np.float64)[0]
        if undo_pair_normaliser:  # Pref-FT divides by the pair count: the population form
            gap = r[0][:, None] - r[0][None, :]
            w *= max(float(jnp.sum(gap > hparams["threshold"])), 1.0)
        np.add.at(pi, actions, np.prod(ref[actions]) * w)
    return pi / pi.sum()


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    ref = rng.dirichlet(np.ones(5))
    rewards = np.array([0.1, 0.7, 0.3, 0.7, 0.0])  # a reward tie between actions 1 and 3
    return ref, rewards


def test_hand_computed_two_actions():
    ref, r = np.array([0.5, 0.5]), np.array([0.0, 1.0])
    np.testing.assert_allclose(ceilings.pref_ft_optimum(ref, r), [0.0, 1.0])
    # Best of 2: action 1 unless both samples are action 0 (prob 1/4).
    np.testing.assert_allclose(ceilings.best_of_n_optimum(ref, r, 2), [0.25, 0.75])
    # RWR, N = 2: a sample's z-score is ±1 when the two differ, 0 when they tie.
    pi, se = ceilings.rwr_optimum(ref, r, 2, beta=1.0)
    w0, w1 = 0.5 * 1.0 + 0.5 * np.exp(-1 / (1 + 1e-6 * 2)), 0.5 * 1.0 + 0.5 * np.exp(1 / (1 + 2e-6))
    np.testing.assert_allclose(pi, np.array([w0, w1]) / (w0 + w1), rtol=1e-5)
    assert se == 0.0


def test_best_of_n_against_brute_force(small):
    ref, rewards = small
    np.testing.assert_allclose(ceilings.best_of_n_optimum(ref, rewards, 3),
                               _brute_force("offline_bofn", ref, rewards, 3, HP), rtol=1e-5)


def test_pref_ft_against_brute_force(small):
    ref, rewards = small
    for threshold in (0.0, 0.35):
        hp = dict(HP, threshold=threshold)
        np.testing.assert_allclose(
            ceilings.pref_ft_optimum(ref, rewards, threshold=threshold),
            _brute_force("pref_ft", ref, rewards, 3, hp, undo_pair_normaliser=True), rtol=1e-5)


def test_rwr_exact_and_monte_carlo_against_brute_force(small):
    ref, rewards = small
    want = _brute_force("offline_rwr", ref, rewards, 3, HP)
    exact, se = ceilings.rwr_optimum(ref, rewards, 3, beta=0.7, weight_clip=3.0)
    # rtol 2e-3: the code z-scores in float32, where N tied rewards leave a deviation of ~1e-8
    # against eps = 1e-6 (z ≈ 0.01 instead of 0); the closed form uses float64.
    np.testing.assert_allclose(exact, want, rtol=2e-3)
    assert se == 0.0
    mc, se = ceilings.rwr_optimum(ref, rewards, 3, beta=0.7, weight_clip=3.0, exact_limit=0,
                                  draws=40_000)
    assert 0 < se < 0.01
    assert abs(mc @ rewards - want @ rewards) < 4 * se + 1e-4
    np.testing.assert_allclose(mc, want, atol=0.01)


def test_paper_bandit_values():
    """The R2 ceilings the issue quotes (Pref-FT 0.590, RWR ≈ 0.715), and Best-of-N's."""
    c = ceilings.ceilings(env.reference_policy(), env.reward_table("R2"), 10,
                          dict(threshold=0.0, rwr_beta=1.0, weight_clip=10.0))
    assert c["pref_ft"][1] == pytest.approx(0.5895, abs=5e-4)
    assert c["offline_rwr"][1] == pytest.approx(0.712, abs=0.005)
    assert c["offline_bofn"][1] == pytest.approx(0.940, abs=0.001)
    for pi, _, _ in c.values():
        np.testing.assert_allclose(pi.sum(), 1.0, rtol=1e-9)
