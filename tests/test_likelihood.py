"""Pref-FT (NLL), Best-of-N with/without the negative gradient, RWR."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from jax.test_util import check_grads

import modeseek as ms

JIT = pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])

LOGPS = jnp.array([-1.0, -2.0, -3.0, -4.0])
REWARDS = jnp.array([0.5, 2.0, 1.0, -1.0])  # best = 1, then 2, 0, worst = 3


def test_best_of_n_hand_values():
    wrap = jax.jit  # hand values go through jit
    f = lambda **kw: wrap(functools.partial(ms.best_of_n_loss, **kw))(LOGPS, REWARDS)
    np.testing.assert_allclose(f(), 2.0)                            # −log π(y_1) = 2
    np.testing.assert_allclose(f(top_k=2), 2.5)                     # −mean(−2, −3)
    np.testing.assert_allclose(f(negative="worst"), 2.0 - 4.0)      # 2 + log π(y_3)
    # all worse than the best: samples 0, 2, 3 → 2 + mean(−1, −3, −4) = 2 − 8/3
    np.testing.assert_allclose(f(negative="all_worse"), 2.0 - 8.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(f(negative="worst", negative_coef=0.5), 2.0 - 2.0)
    # with a reference −1 everywhere: log-ratios 0, −1, −2, −3, floored at −1 → worst gives −1
    refl = jnp.full(4, -1.0)
    g = wrap(functools.partial(ms.best_of_n_loss, negative="worst", negative_clip=1.0))
    np.testing.assert_allclose(g(LOGPS, REWARDS, ref_logps=refl), 1.0)
    np.testing.assert_allclose(ms.nll_loss(LOGPS), [1.0, 2.0, 3.0, 4.0])


def test_negative_clip_stops_gradient_below_floor():
    refl = jnp.full(4, -1.0)
    f = lambda lp: ms.best_of_n_loss(lp, REWARDS, negative="worst", ref_logps=refl,
                                     negative_clip=1.0)
    g = jax.grad(f)(LOGPS)
    np.testing.assert_allclose(g, [0.0, -1.0, 0.0, 0.0])  # loser is 3 nats below: no push
    g = jax.grad(f)(LOGPS.at[3].set(-1.5))  # 0.5 nats below the reference: pushed down
    np.testing.assert_allclose(g, [0.0, -1.0, 0.0, 1.0])


def _group_batch(seed, P=5, N=6, ties=True):
    rng = np.random.default_rng(seed)
    logps = rng.normal(size=(P, N)).astype(np.float32) - 3
    rewards = rng.integers(0, 4, size=(P, N)).astype(np.float32) if ties else rng.normal(
        size=(P, N)).astype(np.float32)
    refl = rng.normal(size=(P, N)).astype(np.float32) - 3
    where = rng.random((P, N)) < 0.7
    if P >= 3:
        where[0] = True
        where[1] = False
        where[2, 1:] = False  # one valid sample
    return logps, rewards, refl, where


BOFN_OPTS = [dict(), dict(top_k=2), dict(negative="worst"), dict(negative="all_worse"),
             dict(negative="all_worse", negative_coef=0.3, negative_clip=0.5, use_ref=True),
             dict(top_k=3, negative="worst", use_ref=True)]


@pytest.mark.parametrize("wrap,opts", [(jax.jit, o) for o in BOFN_OPTS] + [
    (lambda f: f, BOFN_OPTS[0]), (lambda f: f, BOFN_OPTS[4])], ids=lambda x: (
        "-".join(f"{k}{v}" for k, v in x.items()) or "plain") if isinstance(x, dict) else (
        "jit" if x is jax.jit else "eager"))
def test_best_of_n_matches_numpy_and_where_equals_slicing(wrap, opts):
    opts = dict(opts)
    use_ref = opts.pop("use_ref", False)
    logps, rewards, refl, where = _group_batch(0)
    kw = dict(top_k=opts.get("top_k", 1), negative=opts.get("negative"),
              negative_coef=opts.get("negative_coef", 1.0),
              negative_clip=opts.get("negative_clip"))
    fn = wrap(lambda lp, r, rf, w: ms.best_of_n_loss(lp, r, ref_logps=rf if use_ref else None,
                                                     where=w, **kw))
    out = np.asarray(fn(logps, rewards, refl, where))
    for p in range(len(logps)):
        want = ref.best_of_n_row(logps[p], rewards[p], where[p], kw["top_k"], kw["negative"],
                                 kw["negative_coef"], refl[p] if use_ref else None,
                                 kw["negative_clip"])
        np.testing.assert_allclose(out[p], want, rtol=1e-5, atol=1e-6)
        w = where[p]
        if w.any() and wrap is jax.jit:  # masking equals slicing out the valid samples
            sliced = ms.best_of_n_loss(logps[p][w], rewards[p][w],
                                       ref_logps=refl[p][w] if use_ref else None, **kw)
            np.testing.assert_allclose(out[p], sliced, rtol=1e-5, atol=1e-6)


def test_best_of_n_ties_and_degenerate_groups():
    lp = jnp.array([-1.0, -2.0, -3.0])
    # all tied: no sample is worse than the best, so "all_worse" adds nothing
    tied = jnp.zeros(3)
    np.testing.assert_allclose(ms.best_of_n_loss(lp, tied, negative="all_worse"), 1.0)
    # ties at the top: stable order picks the first
    np.testing.assert_allclose(ms.best_of_n_loss(lp, jnp.array([0.0, 1.0, 1.0])), 2.0)
    # a single valid sample has no negative
    w = jnp.array([False, True, False])
    np.testing.assert_allclose(ms.best_of_n_loss(lp, jnp.array([0.0, 1.0, 2.0]),
                                                 negative="worst", where=w), 2.0)


def test_best_of_n_vmap_equals_loop():
    logps, rewards, _, where = _group_batch(1)
    f = functools.partial(ms.best_of_n_loss, negative="all_worse", top_k=2)
    vm = jax.vmap(f)(logps, rewards, where=where)
    loop = np.stack([f(logps[i], rewards[i], where=where[i]) for i in range(len(logps))])
    np.testing.assert_allclose(vm, loop, rtol=1e-6)
    np.testing.assert_allclose(f(logps, rewards, where=where), loop, rtol=1e-6)


def test_best_of_n_grads():
    logps, rewards, refl, _ = _group_batch(2, P=2, N=4, ties=False)
    f = lambda lp: ms.best_of_n_loss(lp, rewards, negative="all_worse", ref_logps=refl)
    check_grads(jax.jit(f), (jnp.asarray(logps),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2,
                eps=1e-3)
    g = jax.grad(lambda lp: jnp.sum(f(lp)))(jnp.asarray(logps))
    assert np.all(jax.grad(lambda r: jnp.sum(ms.best_of_n_loss(logps, r)))(rewards) == 0)
    # winner pulled up (−1), each of the N−1 losers pushed down (+1/(N−1))
    best = np.argmax(rewards, -1)
    for p in range(2):
        want = np.full(4, 1.0 / 3.0)
        want[best[p]] = -1.0
        np.testing.assert_allclose(g[p], want, rtol=1e-6)


@pytest.mark.parametrize("negative", ["worst", "all_worse"])
def test_negative_gradient_widens_gap_on_tabular_softmax(negative):
    """Lemma 6.2 (Tajwar et al.): one SGD step on Best-of-N with a negative term raises
    log π(y_w) − log π(y_l) more than plain Best-of-N does."""
    theta = jnp.array([0.3, -0.2, 0.8, 0.1, -0.5, 0.0])  # softmax over 6 actions
    actions = jnp.array([0, 1, 2, 3, 5])
    rewards = jnp.array([1.0, 0.2, -0.5, 0.4, 0.1])  # winner = action 0, worst = action 2
    lr = 0.5

    def gap_after_step(**kw):
        logps = lambda th: ms.categorical_logprobs(jnp.broadcast_to(th, (5, 6)), actions)
        loss = lambda th: ms.best_of_n_loss(logps(th), rewards, **kw)
        new = theta - lr * jax.grad(loss)(theta)
        logp = jax.nn.log_softmax(new)
        return float(logp[0] - logp[2])

    logp0 = jax.nn.log_softmax(theta)
    before = float(logp0[0] - logp0[2])
    plain, neg = gap_after_step(), gap_after_step(negative=negative)
    assert before < plain < neg
    # Closed form for "worst": plain step adds lr(1 − π_w + π_l), the negative term another
    # lr(1 + π_w − π_l) (gradient of log π(a) w.r.t. logits is e_a − π).
    if negative == "worst":
        p = np.exp(np.asarray(logp0))
        np.testing.assert_allclose(plain - before, lr * (1 - p[0] + p[2]), rtol=1e-5)
        np.testing.assert_allclose(neg - plain, lr * (1 + p[0] - p[2]), rtol=1e-5)


# ---------------------------------------------------------------- RWR


def test_rwr_hand_values():
    wrap = jax.jit  # hand values go through jit
    lp = jnp.array([-1.0, -2.0])
    r = jnp.array([0.0, np.log(2.0)])
    # β = 1: w = (1, 2): −mean(1·(−1), 2·(−2)) = 2.5
    np.testing.assert_allclose(wrap(functools.partial(ms.rwr_loss, beta=1.0))(lp, r), 2.5,
                               rtol=1e-6)
    # clip at 1.5: w = (1, 1.5): −mean(−1, −3) = 2
    np.testing.assert_allclose(
        wrap(functools.partial(ms.rwr_loss, beta=1.0, weight_clip=1.5))(lp, r), 2.0, rtol=1e-6)
    # zscore of (0, 1): mean 0.5, std 0.5 → (−1, 1); β = 2 → w = (e^−½, e^½):
    # −(e^−½·(−1) + e^½·(−2))/2 = (0.6065307 + 3.2974425)/2 = 1.9519866
    out = wrap(functools.partial(ms.rwr_loss, beta=2.0, normalize="zscore"))(lp, jnp.array(
        [0.0, 1.0]))
    np.testing.assert_allclose(out, 1.9519866, rtol=1e-5)


@JIT
@pytest.mark.parametrize("kw", [dict(beta=0.7), dict(beta=1.3, normalize="zscore"),
                                dict(beta=0.5, normalize="zscore", weight_clip=3.0)],
                         ids=["none", "zscore", "zscore-clip"])
def test_rwr_matches_numpy_and_where_equals_slicing(wrap, kw):
    logps, rewards, _, where = _group_batch(3, ties=False)
    out = np.asarray(wrap(lambda lp, r, w: ms.rwr_loss(lp, r, where=w, **kw))(
        logps, rewards, where))
    for p in range(len(logps)):
        want = ref.rwr_row(logps[p], rewards[p], kw["beta"], kw.get("normalize", "none"),
                           kw.get("weight_clip"), where[p])
        np.testing.assert_allclose(out[p], want, rtol=1e-5, atol=1e-6)
        if where[p].any():
            np.testing.assert_allclose(
                out[p], ms.rwr_loss(logps[p][where[p]], rewards[p][where[p]], **kw), rtol=1e-5)
    vm = jax.vmap(lambda lp, r, w: ms.rwr_loss(lp, r, where=w, **kw))(logps, rewards, where)
    np.testing.assert_allclose(vm, out, rtol=1e-6)


def test_rwr_weights_positive_and_constant():
    logps, rewards, _, _ = _group_batch(4, ties=False)
    w = ms.rwr_weights(rewards, beta=0.5, normalize="zscore")
    assert np.all(np.asarray(w) > 0)  # RWR has no negative gradient
    g = jax.grad(lambda r: jnp.sum(ms.rwr_loss(logps, r, beta=0.5)))(jnp.asarray(rewards))
    np.testing.assert_array_equal(g, 0.0)  # weights are stop-gradient
    g = jax.grad(lambda lp: jnp.sum(ms.rwr_loss(lp, rewards, beta=0.5)))(jnp.asarray(logps))
    assert np.all(np.asarray(g) < 0)
    f = jax.jit(lambda lp: ms.rwr_loss(lp, rewards, beta=0.5))
    check_grads(f, (jnp.asarray(logps),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-3)


def test_reward_ranks():
    r = jnp.array([1.0, 3.0, 1.0, 2.0, 5.0])
    np.testing.assert_array_equal(ms.reward_ranks(r), [3, 1, 4, 2, 0])  # ties: original order
    w = jnp.array([True, True, True, True, False])
    np.testing.assert_array_equal(ms.reward_ranks(r, w), [2, 0, 3, 1, 4])  # invalid ranks last


def test_bad_inputs():
    with pytest.raises(ValueError, match="logps.*rewards"):
        ms.best_of_n_loss(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="negative"):
        ms.best_of_n_loss(jnp.zeros(3), jnp.zeros(3), negative="best")
    with pytest.raises(ValueError, match="logps.*rewards"):
        ms.rwr_loss(jnp.zeros(3), jnp.zeros(4), beta=1.0)
    with pytest.raises(ValueError, match="beta"):
        ms.rwr_loss(jnp.zeros(3), jnp.zeros(3), beta=0.0)
    with pytest.raises(ValueError, match="normalize"):
        ms.rwr_loss(jnp.zeros(3), jnp.zeros(3), beta=1.0, normalize="rank")
