"""The bandit environment and exact metrics against brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bandits import env
from bandits.train import exact_metrics


def test_reference_masses_match_paper_values():
    p = env.reference_policy()
    assert p.shape == (100,)
    np.testing.assert_allclose(p.sum(), 1.0, atol=1e-12)
    # PAPER.md §4: exact values from the Cauchy CDF.
    np.testing.assert_allclose(p[[0, 99, 16, 20, 70]], [0.0781, 0.0422, 0.0268, 0.0243, 0.00211],
                               atol=6e-5)
    assert int(np.argmax(p[1:99])) + 1 == 16  # interior mode


def test_reference_masses_match_monte_carlo():
    # Brute force: histogram 4M draws of tanh(Cauchy(-0.7, 0.4)); 4 standard errors per bin.
    rng = np.random.default_rng(0)
    n = 4_000_000
    y = np.tanh(-0.7 + 0.4 * rng.standard_cauchy(n))
    counts = np.bincount(np.minimum(((y + 1.0) / 0.02).astype(int), 99), minlength=100)
    p_mc = counts / n
    p = env.reference_policy()
    np.testing.assert_array_less(np.abs(p_mc - p), 4 * np.sqrt(p * (1 - p) / n) + 1e-6)


def test_sampled_reference_is_a_histogram():
    p = env.sampled_reference_policy(seed=1, num_samples=10_000)
    np.testing.assert_allclose(p.sum(), 1.0)
    np.testing.assert_allclose(p * 10_000, np.round(p * 10_000), atol=1e-9)
    assert np.abs(p - env.reference_policy()).max() < 0.02


def test_reward_expectations_brute_force():
    p = env.reference_policy()
    for name, expected in (("R1", 0.0390), ("R2", 0.3772)):
        peak, width = env.REWARDS[name]
        brute = sum(p[a] * np.exp(-(((a - peak) / width) ** 2)) for a in range(100))
        np.testing.assert_allclose((p * env.reward_table(name)).sum(), brute, rtol=1e-12)
        np.testing.assert_allclose(brute, expected, atol=1e-4)
    r = env.reward_table("R1_w30")
    assert r.max() == 1.0 and r[70] == 1.0 and r[40] == pytest.approx(np.exp(-1.0))


def test_bad_reward_and_width():
    with pytest.raises(ValueError, match="unknown reward 'R9'.*R1"):
        env.reward_table("R9")
    with pytest.raises(ValueError, match="width"):
        env.bump_reward(70, 0.0)


def test_exact_metrics_against_python_loops():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 100)) * 2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref = np.log(env.reference_policy())
    rewards = env.reward_table("R1")
    beta = 0.1
    m = exact_metrics(jnp.asarray(logp, jnp.float32), jnp.asarray(ref, jnp.float32),
                      jnp.asarray(rewards, jnp.float32), pi_star_beta=beta, peak_radius=10)
    opt = env.optimal_policy(np.exp(ref), rewards, beta)
    want = {k: 0.0 for k in m}
    for e, a in itertools.product(range(3), range(100)):
        p, q = np.exp(logp[e, a]), np.exp(ref[a])
        want["expected_reward"] += p * rewards[a] / 3
        want["kl_policy_ref"] += p * (logp[e, a] - ref[a]) / 3
        want["kl_ref_policy"] += q * (ref[a] - logp[e, a]) / 3
        want["entropy"] += -p * logp[e, a] / 3
        want["peak_mass"] += p * (abs(a - 70) <= 10) / 3
        want["kl_policy_opt"] += p * (logp[e, a] - np.log(opt[a])) / 3
        want["kl_opt_policy"] += opt[a] * (np.log(opt[a]) - logp[e, a]) / 3
    for k, v in want.items():
        np.testing.assert_allclose(float(m[k]), v, rtol=2e-4, atol=2e-5, err_msg=k)


def test_prompts_are_uniform_unit_cube():
    x = env.sample_prompts(jax.random.key(0), 1000)
    assert x.shape == (1000, 100)
    assert float(x.min()) >= 0.0 and float(x.max()) < 1.0
    assert abs(float(x.mean()) - 0.5) < 0.01
