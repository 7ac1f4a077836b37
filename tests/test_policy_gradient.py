"""REINFORCE, PPO clip, clipped value loss, KL estimators (and the exact metrics)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from jax.test_util import check_grads

import modeseek as ms

JIT = pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])


def _random(seed=0, shape=(4, 5)):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=shape).astype(np.float32) for _ in range(3))


def test_hand_values():
    wrap = jax.jit  # hand values go through jit
    # REINFORCE: −A·log π = −2·(−3) = 6
    np.testing.assert_allclose(wrap(ms.reinforce_loss)(jnp.float32(-3.0), jnp.float32(2.0)), 6.0)
    ppo = wrap(functools.partial(ms.ppo_clip_loss, clip_eps=0.2))
    lr15, lr05 = jnp.float32(np.log(1.5)), jnp.float32(np.log(0.5))
    zero = jnp.float32(0.0)
    # ρ = 1.5, A = +1: max(−1.5, −1.2) = −1.2 (clipped);  A = −1: max(1.5, 1.2) = 1.5
    np.testing.assert_allclose(ppo(lr15, zero, jnp.float32(1.0)), -1.2, rtol=1e-6)
    np.testing.assert_allclose(ppo(lr15, zero, jnp.float32(-1.0)), 1.5, rtol=1e-6)
    # ρ = 0.5, A = +1: max(−0.5, −0.8) = −0.5;  A = −1: max(0.5, 0.8) = 0.8 (clipped)
    np.testing.assert_allclose(ppo(lr05, zero, jnp.float32(1.0)), -0.5, rtol=1e-6)
    np.testing.assert_allclose(ppo(lr05, zero, jnp.float32(-1.0)), 0.8, rtol=1e-6)
    frac = wrap(ms.ppo_clip_fraction)(jnp.array([lr15, 0.1, lr05]), jnp.zeros(3))
    np.testing.assert_array_equal(frac, [1.0, 0.0, 1.0])
    v = wrap(ms.clipped_value_loss)
    # V = 1.5, V_old = 1, R = 0: ½·max(1.5², 1.2²) = 1.125;  V = 0.5, V_old = 1, R = 1:
    # ½·max(0.5², 0.2²) = 0.125;  V = 1.1, V_old = 1, R = 2: ½·max(0.81, 0.81) = 0.405
    np.testing.assert_allclose(v(jnp.array([1.5, 0.5, 1.1]), jnp.array([1.0, 1.0, 1.0]),
                                 jnp.array([0.0, 1.0, 2.0])), [1.125, 0.125, 0.405], rtol=1e-5)
    # KL estimators at d = log π − log π_ref = 1: k1 = 1, k2 = ½, k3 = e^−1 − 1 + 1 = 0.3678794
    for est, want in [("k1", 1.0), ("k2", 0.5), ("k3", 0.36787944)]:
        f = wrap(functools.partial(ms.kl_penalty, estimator=est))
        np.testing.assert_allclose(f(jnp.float32(-1.0), jnp.float32(-2.0)), want, rtol=1e-6)


@JIT
def test_match_numpy(wrap):
    lp, old, a = _random()
    lp = old + 0.4 * lp  # ratios around 1 so both branches occur
    np.testing.assert_allclose(wrap(ms.reinforce_loss)(lp, a), ref.reinforce(lp, a), rtol=1e-6)
    for eps in (0.1, 0.3):
        out = wrap(functools.partial(ms.ppo_clip_loss, clip_eps=eps))(lp, old, a)
        np.testing.assert_allclose(out, ref.ppo_clip(lp, old, a, eps), rtol=1e-5, atol=1e-6)
    v, v_old, ret = _random(1)
    np.testing.assert_allclose(wrap(ms.clipped_value_loss)(v, v_old, ret),
                               ref.clipped_value(v, v_old, ret), rtol=1e-5)
    for est, fn in [("k1", ref.kl_k1), ("k2", ref.kl_k2), ("k3", ref.kl_k3)]:
        out = wrap(functools.partial(ms.kl_penalty, estimator=est))(lp, old)
        np.testing.assert_allclose(out, fn(lp, old), rtol=1e-4, atol=1e-6)


def test_stop_gradients():
    lp, old, a = (jnp.asarray(x) for x in _random(2))
    g = jax.grad(lambda adv: jnp.sum(ms.reinforce_loss(lp, adv)))(a)
    np.testing.assert_array_equal(g, 0.0)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(ms.reinforce_loss(x, a)))(lp), -a)
    g_old, g_adv = jax.grad(lambda o, adv: jnp.sum(ms.ppo_clip_loss(lp, o, adv)),
                            argnums=(0, 1))(old, a)
    np.testing.assert_array_equal(g_old, 0.0)
    np.testing.assert_array_equal(g_adv, 0.0)
    g_ret = jax.grad(lambda r: jnp.sum(ms.clipped_value_loss(lp, old, r)))(a)
    np.testing.assert_array_equal(g_ret, 0.0)


def test_ppo_gradient_zero_when_clipped():
    # ρ = 1.5 > 1 + ε with A > 0: the clipped branch wins, gradient 0.
    g = jax.grad(ms.ppo_clip_loss)(jnp.float32(np.log(1.5)), jnp.float32(0.0), jnp.float32(1.0))
    assert float(g) == 0.0
    # inside the trust region: ∂/∂logπ (−A·ρ) = −A·ρ
    g = jax.grad(ms.ppo_clip_loss)(jnp.float32(np.log(1.1)), jnp.float32(0.0), jnp.float32(2.0))
    np.testing.assert_allclose(g, -2.0 * 1.1, rtol=1e-5)
    # on-policy (ρ = 1) PPO's gradient equals REINFORCE's
    lp, _, a = (jnp.asarray(x) for x in _random(3))
    g1 = jax.grad(lambda x: jnp.sum(ms.ppo_clip_loss(x, lp, a)))(lp)
    g2 = jax.grad(lambda x: jnp.sum(ms.reinforce_loss(x, a)))(lp)
    np.testing.assert_allclose(g1, g2, rtol=1e-6)


@pytest.mark.parametrize("name", ["reinforce", "ppo", "value", "k1", "k2", "k3"])
def test_grads(name):
    lp, old, a = (jnp.asarray(x) for x in _random(4, shape=(6,)))
    lp = old + 0.05 * lp  # keep clean of the PPO kink
    fns = {
        "reinforce": lambda x: ms.reinforce_loss(x, a),
        "ppo": lambda x: ms.ppo_clip_loss(x, old, a, clip_eps=0.3),
        "value": lambda x: ms.clipped_value_loss(x, old, a, clip_eps=0.3),
        "k1": lambda x: ms.kl_penalty(x, old, estimator="k1"),
        "k2": lambda x: ms.kl_penalty(x, old, estimator="k2"),
        "k3": lambda x: ms.kl_penalty(x, old, estimator="k3"),
    }
    order = 2 if name in ("ppo", "k3") else 1
    check_grads(jax.jit(fns[name]), (lp,), order=order, modes=["rev"], atol=1e-2, rtol=1e-2,
                eps=1e-3)


def test_k3_nonnegative_and_unbiased_on_categorical():
    rng = np.random.default_rng(5)
    logp = ref.log_softmax(rng.normal(size=(3, 8)) * 2).astype(np.float32)
    logq = ref.log_softmax(rng.normal(size=(3, 8)) * 2).astype(np.float32)
    exact = np.sum(np.exp(logp) * (logp.astype(np.float64) - logq), -1)
    np.testing.assert_allclose(ms.kl_divergence(logp, logq), exact, rtol=1e-5)
    k = {e: ms.kl_penalty(logp, logq, estimator=e) for e in ("k1", "k2", "k3")}
    assert np.all(np.asarray(k["k3"]) >= 0) and np.all(np.asarray(k["k2"]) >= 0)
    assert np.any(np.asarray(k["k1"]) < 0)
    # E_π[k1] = E_π[k3] = KL(π‖π_ref) exactly (sum over all actions); k2 is biased.
    np.testing.assert_allclose(ms.expectation(logp, k["k1"]), exact, rtol=1e-5)
    np.testing.assert_allclose(ms.expectation(logp, k["k3"]), exact, rtol=1e-4)
    assert not np.allclose(ms.expectation(logp, k["k2"]), exact, rtol=1e-2)
    # Monte Carlo: average of k1 over samples y ~ π approaches the KL.
    ys = jax.random.categorical(jax.random.key(0), jnp.asarray(logp[0]), shape=(20000,))
    mc = jnp.mean(ms.kl_penalty(jnp.asarray(logp[0])[ys], jnp.asarray(logq[0])[ys]))
    sd = np.std(np.asarray(logp[0] - logq[0])[np.asarray(ys)]) / np.sqrt(20000)
    assert abs(float(mc) - exact[0]) < 5 * sd
    # k3 ≥ 0 for any d
    d = jnp.linspace(-20.0, 20.0, 101)
    assert np.all(np.asarray(ms.kl_penalty(d, jnp.zeros_like(d), estimator="k3")) >= 0)


def test_metrics_entropy_expectation():
    logp = jnp.log(jnp.array([0.5, 0.25, 0.25, 0.0]))
    # H = ½ log 2 + 2·¼ log 4 = 1.5 log 2 = 1.0397208 (0·log 0 = 0)
    np.testing.assert_allclose(ms.entropy(logp), 1.0397208, rtol=1e-6)
    np.testing.assert_allclose(ms.expectation(logp, jnp.array([1.0, 2.0, 4.0, 100.0])), 2.0)
    np.testing.assert_allclose(ms.kl_divergence(logp, jnp.log(jnp.full(4, 0.25))),
                               2 * np.log(2) - 1.5 * np.log(2), rtol=1e-6)
    # zero-probability actions (log p = −inf) leave the gradients finite
    g = jax.grad(ms.entropy)(logp)
    assert np.all(np.isfinite(np.asarray(g)))
    g = jax.grad(lambda a: ms.kl_divergence(a, jnp.log(jnp.full(4, 0.25))))(logp)
    assert np.all(np.isfinite(np.asarray(g)))
    # ∂H/∂log p(a) = −p(a)(log p(a) + 1): (−½(1 − log 2), −¼(1 − log 4), same, 0)
    np.testing.assert_allclose(jax.grad(ms.entropy)(logp),
                               [-0.5 * (1 - np.log(2)), -0.25 * (1 - np.log(4)),
                                -0.25 * (1 - np.log(4)), 0.0], rtol=1e-5, atol=1e-7)


def test_vmap_equals_loop():
    lp, old, a = (jnp.asarray(x) for x in _random(6))
    f = lambda x, o, adv: ms.ppo_clip_loss(x, o, adv, clip_eps=0.2)
    vm = jax.vmap(f)(lp, old, a)
    loop = np.stack([f(lp[i], old[i], a[i]) for i in range(len(lp))])
    np.testing.assert_allclose(vm, loop)
    # clip_eps as a traced, vmapped value
    eps = jnp.array([0.1, 0.2, 0.5])
    vm = jax.vmap(lambda e: ms.ppo_clip_loss(lp, old, a, clip_eps=e))(eps)
    loop = np.stack([ms.ppo_clip_loss(lp, old, a, clip_eps=float(e)) for e in eps])
    np.testing.assert_allclose(vm, loop, rtol=1e-6)


def test_bad_inputs():
    a, b = jnp.zeros(3), jnp.zeros(4)
    with pytest.raises(ValueError, match="logps.*advantages"):
        ms.reinforce_loss(a, b)
    with pytest.raises(ValueError, match="old_logps"):
        ms.ppo_clip_loss(a, b, a)
    with pytest.raises(ValueError, match="clip_eps"):
        ms.ppo_clip_loss(a, a, a, clip_eps=0.0)
    with pytest.raises(ValueError, match="returns"):
        ms.clipped_value_loss(a, a, b)
    with pytest.raises(ValueError, match="ref_logps"):
        ms.kl_penalty(a, b)
    with pytest.raises(ValueError, match="estimator"):
        ms.kl_penalty(a, a, estimator="k4")
