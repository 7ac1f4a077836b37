"""Group baselines, the running normaliser, GAE."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import modeseek as ms

JIT = pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
GROUP = {"mean": (ms.mean_baseline_advantages, ref.mean_baseline),
         "rloo": (ms.rloo_advantages, ref.rloo),
         "zscore": (ms.zscore_advantages, ref.zscore)}


def _batch(seed, P=5, N=6):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(P, N)).astype(np.float32)
    w = rng.random((P, N)) < 0.7
    w[0], w[1] = True, False
    w[2, 1:] = False
    return r, w


def test_hand_values():
    wrap = jax.jit  # hand values go through jit
    r = jnp.array([1.0, 2.0, 3.0, 6.0])  # mean 3, population std √3.5 = 1.8708287
    np.testing.assert_allclose(wrap(ms.mean_baseline_advantages)(r), [-2, -1, 0, 3])
    # leave-one-out: 1 − (2+3+6)/3 = −8/3, 2 − 10/3 = −4/3, 3 − 3 = 0, 6 − 2 = 4
    np.testing.assert_allclose(wrap(ms.rloo_advantages)(r), [-8 / 3, -4 / 3, 0, 4], rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(wrap(ms.zscore_advantages)(r),
                               np.array([-2, -1, 0, 3]) / 1.8708287, rtol=1e-5)
    np.testing.assert_allclose(wrap(ms.nonnegative_advantages)(jnp.array([-1.0, 0.5, 2.0])),
                               [0.0, 1.5, 3.0])


@JIT
@pytest.mark.parametrize("name", sorted(GROUP))
def test_group_matches_numpy_and_where_equals_slicing(wrap, name):
    fn, reference = GROUP[name]
    r, w = _batch(0)
    out = np.asarray(wrap(lambda x, m: fn(x, where=m))(r, w))
    np.testing.assert_allclose(out, reference(r, w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(wrap(fn)(r), reference(r), rtol=1e-5, atol=1e-5)
    assert np.all(out[~w] == 0)
    for p in range(len(r)):
        if w[p].any():
            np.testing.assert_allclose(out[p][w[p]], fn(r[p][w[p]]), rtol=1e-5, atol=1e-6)
    vm = jax.vmap(lambda x, m: fn(x, where=m))(r, w)
    np.testing.assert_allclose(vm, out, rtol=1e-6, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-100, 100, width=32), min_size=2, max_size=8))
def test_rloo_is_rescaled_mean_baseline(rewards):
    r = np.array(rewards, np.float32)
    n = len(r)
    want = n / (n - 1) * (r.astype(np.float64) - r.mean(dtype=np.float64))
    np.testing.assert_allclose(ms.rloo_advantages(r), want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ms.rloo_advantages(r), ref.rloo(r), rtol=1e-4, atol=1e-3)


def test_rloo_single_sample_is_zero():
    np.testing.assert_array_equal(ms.rloo_advantages(jnp.array([[3.0]])), [[0.0]])
    out = ms.rloo_advantages(jnp.array([3.0, 1.0, 2.0]), where=jnp.array([False, True, False]))
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0])


def test_nonnegative_advantages():
    r, w = _batch(1)
    a = ms.zscore_advantages(r, where=w)
    out = np.asarray(ms.nonnegative_advantages(a, where=w))
    assert np.all(out >= 0) and np.all(out[~w] == 0)
    for p in range(len(r)):
        if w[p].any():
            assert out[p][w[p]].min() == 0.0
            # differences (hence the ranking) are preserved
            np.testing.assert_allclose(np.diff(out[p][w[p]]), np.diff(np.asarray(a)[p][w[p]]),
                                       atol=1e-6)


def test_zscore_constant_group_is_finite():
    out = ms.zscore_advantages(jnp.full((2, 4), 3.0))
    np.testing.assert_array_equal(out, 0.0)


# ---------------------------------------------------------------- running statistics


def test_running_stats_equal_concatenation():
    rng = np.random.default_rng(2)
    batches = [rng.normal(loc=i, scale=1 + i, size=(3, 4)).astype(np.float32) for i in range(4)]
    masks = [rng.random((3, 4)) < 0.6 for _ in range(4)]
    masks[2][:] = False  # an all-invalid batch changes nothing
    stats = ms.running_stats_init()
    update = jax.jit(lambda s, v, m: ms.running_stats_update(s, v, where=m))
    for b, m in zip(batches, masks):
        stats = update(stats, b, m)
    seen = np.concatenate([b[m] for b, m in zip(batches, masks)]).astype(np.float64)
    assert int(stats.count) == seen.size
    np.testing.assert_allclose(stats.mean, seen.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.m2 / stats.count, seen.var(), rtol=1e-4)
    out = ms.running_stats_normalize(stats, batches[0])
    np.testing.assert_allclose(out, (batches[0] - seen.mean()) / (seen.std() + 1e-6), rtol=1e-4,
                               atol=1e-5)
    clipped = ms.running_stats_normalize(stats, batches[0] * 100, clip=2.0)
    assert np.all(np.abs(np.asarray(clipped)) <= 2.0)
    # unmasked
    stats = ms.running_stats_init()
    for b in batches:
        stats = ms.running_stats_update(stats, b)
    allv = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    np.testing.assert_allclose(stats.mean, allv.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.m2 / stats.count, allv.var(), rtol=1e-4)


def test_running_stats_unaffected_by_reuse_steps():
    """The documented driver pattern: update once per sampled batch, then T reuse steps that
    only normalise. The statistics must not depend on T."""
    rng = np.random.default_rng(3)
    batches = [rng.normal(loc=2 * i, size=(2, 5)).astype(np.float32) for i in range(5)]

    def run(reuse):
        stats, seen_normalised = ms.running_stats_init(), []
        for b in batches:
            stats = ms.running_stats_update(stats, b)
            for _ in range(reuse):
                seen_normalised.append(ms.running_stats_normalize(stats, b))
        return stats, seen_normalised[::reuse]

    (s1, n1), (s5, n5) = run(1), run(5)
    for a, b in zip(s1, s5):
        np.testing.assert_allclose(a, b)
    for a, b in zip(n1, n5):
        np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(s5.count, 10 * len(batches) / 1)
    allv = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    np.testing.assert_allclose(s5.mean, allv.mean(), rtol=1e-5)
    np.testing.assert_allclose(s5.m2 / s5.count, allv.var(), rtol=1e-4)


# ---------------------------------------------------------------- GAE


@JIT
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0)])
def test_gae_matches_loop_with_right_padding(wrap, gamma, lam):
    rng = np.random.default_rng(4)
    B, T = 3, 6
    rewards = rng.normal(size=(B, T)).astype(np.float32)
    values = rng.normal(size=(B, T)).astype(np.float32)
    lengths = [6, 4, 1]
    mask = np.array([[t < n for t in range(T)] for n in lengths], np.float32)
    # garbage on padding must not leak into real steps
    rewards[mask == 0] = 1e3
    values[mask == 0] = -1e3
    adv, ret = wrap(lambda r, v, m: ms.gae_advantages(r, v, m, gamma=gamma, lam=lam))(
        rewards, values, mask)
    want_adv, want_ret = ref.gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(adv)[mask == 0] == 0) and np.all(np.asarray(ret)[mask == 0] == 0)


def test_gae_hand_values():
    # γ = λ = 1: A_t = Σ_{s ≥ t} r_s − V_t (Monte-Carlo return minus value).
    r = jnp.array([[1.0, 2.0, 3.0, 0.0]])
    v = jnp.array([[0.5, 1.0, 1.5, 9.0]])
    m = jnp.array([[1, 1, 1, 0]])
    adv, ret = ms.gae_advantages(r, v, m, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [[5.5, 4.0, 1.5, 0.0]])
    np.testing.assert_allclose(ret, [[6.0, 5.0, 3.0, 0.0]])
    # λ = 0: one-step TD errors δ_t = r_t + γ V_{t+1} − V_t (γ = 0.5):
    # δ_0 = 1 + 0.5 − 0.5 = 1, δ_1 = 2 + 0.75 − 1 = 1.75, δ_2 = 3 + 0 − 1.5 = 1.5
    adv, _ = ms.gae_advantages(r, v, m, gamma=0.5, lam=0.0)
    np.testing.assert_allclose(adv, [[1.0, 1.75, 1.5, 0.0]])
