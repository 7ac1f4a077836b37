"""Pair masks from N scored samples, Bradley–Terry labels, pairwise losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

import modeseek as ms

JIT = pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])


def _pairs(mask):
    return sorted(zip(*np.nonzero(np.asarray(mask))))


@JIT
def test_ranked_pairs_distinct_ties_threshold(wrap):
    r = jnp.array([0.3, 2.0, -1.0, 0.5, 1.1])
    m = wrap(ms.ranked_pairs_mask)(r)
    assert int(m.sum()) == 5 * 4 // 2
    assert _pairs(m) == ref.ranked_pairs(np.asarray(r))
    assert not np.any(np.asarray(m) & np.asarray(m).T)  # antisymmetric
    # ties give no pair: rewards 1, 1, 0 → only (0, 2), (1, 2)
    assert _pairs(wrap(ms.ranked_pairs_mask)(jnp.array([1.0, 1.0, 0.0]))) == [(0, 2), (1, 2)]
    # threshold drops gaps ≤ threshold: the gaps 0.2 (3 vs 0) and 0.6 (4 vs 3) go
    m = wrap(functools.partial(ms.ranked_pairs_mask, threshold=0.7))(r)
    assert _pairs(m) == [p for p in ref.ranked_pairs(np.asarray(r)) if p not in [(3, 0), (4, 3)]]
    assert len(_pairs(m)) == 8


@JIT
def test_ranked_pairs_where_equals_slicing(wrap):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(4, 6)).astype(np.float32)
    w = rng.random((4, 6)) < 0.6
    m = np.asarray(wrap(lambda x, v: ms.ranked_pairs_mask(x, threshold=0.3, where=v))(r, w))
    for p in range(4):
        idx = np.nonzero(w[p])[0]
        sliced = np.asarray(ms.ranked_pairs_mask(r[p][idx], threshold=0.3))
        np.testing.assert_array_equal(m[p][np.ix_(idx, idx)], sliced)
        assert not m[p][~w[p]].any() and not m[p][:, ~w[p]].any()
        assert _pairs(m[p]) == ref.ranked_pairs(r[p], 0.3, w[p])


def test_best_vs_worst():
    wrap = jax.jit  # hand values go through jit
    r = jnp.array([[0.3, 2.0, -1.0, 0.5], [1.0, 1.0, 1.0, 1.0], [0.0, 5.0, 5.0, -2.0]])
    m = np.asarray(wrap(ms.best_vs_worst_mask)(r))
    assert _pairs(m[0]) == [(1, 2)]
    assert _pairs(m[1]) == []  # all tied: no pair
    assert _pairs(m[2]) == [(1, 3)]  # first best on ties
    w = jnp.array([[True, True, False, True]] * 3)
    m = np.asarray(wrap(lambda x, v: ms.best_vs_worst_mask(x, where=v))(r, w))
    assert _pairs(m[0]) == [(1, 0)]  # −1.0 is masked out; worst valid is 0.3
    m = np.asarray(ms.best_vs_worst_mask(r, threshold=2.5))
    assert _pairs(m[0]) == [(1, 2)] and _pairs(m[2]) == [(1, 3)]
    m = np.asarray(ms.best_vs_worst_mask(r, threshold=3.5))
    assert _pairs(m[0]) == [] and _pairs(m[2]) == [(1, 3)]
    assert m.sum(axis=(-1, -2)).max() <= 1


def test_random_pairs_is_oriented_matching():
    wrap = jax.jit
    rng = np.random.default_rng(1)
    P, N = 16, 7
    r = rng.normal(size=(P, N)).astype(np.float32)
    m = np.asarray(wrap(ms.random_pairs_mask)(jax.random.key(0), r))
    for p in range(P):
        involved = m[p].sum(0) + m[p].sum(1)
        assert involved.max() <= 1  # each sample in at most one pair
        assert m[p].sum() == N // 2  # distinct rewards: a full matching
        for i, j in _pairs(m[p]):
            assert r[p, i] > r[p, j]  # oriented winner → loser
    # independent permutations per prompt and per key
    assert len({tuple(map(tuple, _pairs(m[p]))) for p in range(P)}) > 1
    m2 = np.asarray(ms.random_pairs_mask(jax.random.key(1), r))
    assert not np.array_equal(m, m2)
    # with ties and masks, a subset of the matching survives, never an invalid sample
    w = rng.random((P, N)) < 0.6
    tied = np.round(r)
    m3 = np.asarray(ms.random_pairs_mask(jax.random.key(2), tied, where=w))
    ranked = np.asarray(ms.ranked_pairs_mask(tied, where=w))
    assert not np.any(m3 & ~ranked)
    assert (m3.sum(-1) + m3.sum(-2)).max() <= 1
    # with distinct rewards, the valid samples are matched among themselves: ⌊n_valid/2⌋ pairs
    m4 = np.asarray(ms.random_pairs_mask(jax.random.key(3), r, where=w))
    np.testing.assert_array_equal(m4.sum((-1, -2)), w.sum(-1) // 2)
    assert not np.any(m4 & ~np.asarray(ms.ranked_pairs_mask(r, where=w)))


def test_random_pairs_cover_all_pairs_uniformly():
    r = jnp.arange(4.0)
    keys = jax.random.split(jax.random.key(3), 600)
    ms_ = np.asarray(jax.vmap(lambda k: ms.random_pairs_mask(k, r))(keys))
    freq = ms_.mean(0)
    # each of the 6 oriented pairs (i > j) appears with probability 1/3 (3 perfect matchings)
    np.testing.assert_allclose(freq[np.tril_indices(4, -1)], 1 / 3, atol=0.07)
    assert freq[np.triu_indices(4)].sum() == 0


def test_bradley_terry_label_frequency():
    ra = jnp.array([0.0, 1.0, -2.0, 0.5])
    rb = jnp.array([0.0, 0.0, 0.0, 1.5])
    n = 20000
    keys = jax.random.split(jax.random.key(4), n)
    labels = np.asarray(jax.vmap(lambda k: ms.bradley_terry_labels(k, ra, rb))(keys))
    p = ref.sigmoid(np.asarray(ra - rb))
    sd = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(labels.mean(0) - p) < 5 * sd)
    labels_t = np.asarray(jax.vmap(lambda k: ms.bradley_terry_labels(k, ra, rb,
                                                                     temperature=2.0))(keys))
    p2 = ref.sigmoid(np.asarray(ra - rb) / 2)
    assert np.all(np.abs(labels_t.mean(0) - p2) < 5 * np.sqrt(p2 * (1 - p2) / n))


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_pairwise_loss_equals_double_loop(loss):
    rng = np.random.default_rng(5)
    P, N = 3, 5
    lp = rng.normal(size=(P, N)).astype(np.float32) - 3
    rl = rng.normal(size=(P, N)).astype(np.float32) - 3
    r = rng.integers(0, 3, size=(P, N)).astype(np.float32)
    fn, hp, reference = {
        "dpo": (ms.dpo_loss, dict(beta=0.4), lambda *a: ref.dpo(*a, beta=0.4)),
        "ipo": (ms.ipo_loss, dict(tau=0.2), lambda *a: ref.ipo(*a, tau=0.2)),
    }[loss]
    mask = ms.ranked_pairs_mask(r)
    total, count = jax.jit(lambda a, b, m: ms.pairwise_loss(fn, a, b, m, **hp))(lp, rl, mask)
    for p in range(P):
        pairs = ref.ranked_pairs(r[p])
        want = sum(reference(lp[p, i], lp[p, j], rl[p, i], rl[p, j]) for i, j in pairs)
        np.testing.assert_allclose(total[p], want, rtol=1e-5, atol=1e-6)
        assert int(count[p]) == len(pairs)
    # the winner/loser views
    win, lose = ms.pairwise(jnp.arange(3.0))
    np.testing.assert_array_equal((win - lose)[2, 0], 2.0)
