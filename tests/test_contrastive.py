"""DPO, cDPO, robust DPO, IPO, SLiC-hinge, SimPO, Bradley–Terry."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import modeseek as ms

JIT = pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
LOG2 = 0.6931471805599453
# Policy/ref log-probs with h = (−1 − (−1)) − (−3 − (−1)) = 2.
H2 = (jnp.float32(-1.0), jnp.float32(-3.0), jnp.float32(-1.0), jnp.float32(-1.0))


def _random(shape=(5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=shape).astype(np.float32) * 3 - 5 for _ in range(4))


def test_hand_values():
    wrap = jax.jit  # hand values go through jit
    # DPO, h = 2, β = 0.5: −log σ(1) = log(1 + e^−1) = 0.31326169
    np.testing.assert_allclose(wrap(functools.partial(ms.dpo_loss, beta=0.5))(*H2),
                               0.31326169, atol=1e-6)
    # cDPO ε = 0.1: 0.9·0.31326169 + 0.1·(−log σ(−1) = 1.31326169) = 0.41326169
    np.testing.assert_allclose(
        wrap(functools.partial(ms.dpo_loss, beta=0.5, label_smoothing=0.1))(*H2),
        0.41326169, atol=1e-6)
    # robust DPO ε = 0.1: (0.9·0.31326169 − 0.1·1.31326169) / 0.8 = 0.15060935/0.8 = 0.18826169
    np.testing.assert_allclose(
        wrap(functools.partial(ms.robust_dpo_loss, beta=0.5, label_smoothing=0.1))(*H2),
        0.18826169, atol=1e-6)
    # IPO τ = 0.5 (target 1/(2τ) = 1): (2 − 1)² = 1;  τ = 0.25 (target 2): 0
    np.testing.assert_allclose(wrap(functools.partial(ms.ipo_loss, tau=0.5))(*H2), 1.0)
    np.testing.assert_allclose(wrap(functools.partial(ms.ipo_loss, tau=0.25))(*H2), 0.0)
    # SLiC: max(0, 1 − 0.25·2) = 0.5;  max(0, 1 − 0.5·2) = 0
    np.testing.assert_allclose(wrap(functools.partial(ms.slic_hinge_loss, beta=0.25))(*H2), 0.5)
    np.testing.assert_allclose(wrap(functools.partial(ms.slic_hinge_loss, beta=0.5))(*H2), 0.0)
    # SimPO: β(−4/2 − (−9/3)) − γ = 2·1 − 0.5 = 1.5;  −log σ(1.5) = log(1 + e^−1.5) = 0.20141328
    np.testing.assert_allclose(
        wrap(functools.partial(ms.simpo_loss, beta=2.0, gamma=0.5))(-4.0, -9.0, 2, 3),
        0.20141328, atol=1e-6)
    # Bradley–Terry: −log σ(1 − 0) = 0.31326169
    np.testing.assert_allclose(wrap(ms.bradley_terry_loss)(jnp.float32(1.0), jnp.float32(0.0)),
                               0.31326169, atol=1e-6)
    np.testing.assert_allclose(wrap(ms.logratio_margin)(*H2), 2.0)


@JIT
def test_match_numpy(wrap):
    x = _random()
    n = np.random.default_rng(9).integers(0, 6, size=(2, 5, 3))
    cases = [
        (functools.partial(ms.dpo_loss, beta=0.3), ref.dpo(*x, beta=0.3)),
        (functools.partial(ms.dpo_loss, beta=0.3, label_smoothing=0.2),
         ref.dpo(*x, beta=0.3, eps=0.2)),
        (functools.partial(ms.robust_dpo_loss, beta=0.7, label_smoothing=0.3),
         ref.robust_dpo(*x, beta=0.7, eps=0.3)),
        (functools.partial(ms.ipo_loss, tau=0.1), ref.ipo(*x, tau=0.1)),
        (functools.partial(ms.slic_hinge_loss, beta=0.4, margin=2.0),
         ref.slic(*x, beta=0.4, delta=2.0)),
    ]
    for fn, want in cases:
        np.testing.assert_allclose(wrap(fn)(*x), want, rtol=1e-5, atol=1e-5)
    simpo = wrap(functools.partial(ms.simpo_loss, beta=1.5, gamma=0.3))
    np.testing.assert_allclose(simpo(x[0], x[1], n[0], n[1]),
                               ref.simpo(x[0], x[1], n[0], n[1], beta=1.5, gamma=0.3), rtol=1e-5)
    bt = wrap(functools.partial(ms.bradley_terry_loss, label_smoothing=0.1))
    np.testing.assert_allclose(bt(x[0], x[1]), ref.bradley_terry(x[0], x[1], 0.1), rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-30, 0), min_size=4, max_size=4), st.floats(0.01, 5.0),
       st.floats(0.0, 0.45))
def test_dpo_matches_numpy_hypothesis(vals, beta, eps):
    out = ms.dpo_loss(*[np.float32(v) for v in vals], beta=beta, label_smoothing=eps)
    want = ref.dpo(*[np.float32(v) for v in vals], beta=np.float32(beta), eps=np.float32(eps))
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert np.isfinite(out)


def test_dpo_is_log2_at_reference():
    pc, pr, _, _ = _random()
    np.testing.assert_allclose(ms.dpo_loss(pc, pr, pc, pr, beta=0.37), LOG2, atol=1e-6)
    np.testing.assert_allclose(ms.dpo_loss(pc, pr, pc, pr, beta=2.0, label_smoothing=0.2), LOG2,
                               atol=1e-6)


def test_dpo_falls_when_chosen_rises():
    pc, pr, rc, rr = _random(seed=1)
    base = ms.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert np.all(ms.dpo_loss(pc + 0.5, pr, rc, rr, beta=0.5) < base)
    assert np.all(ms.dpo_loss(pc, pr - 0.5, rc, rr, beta=0.5) < base)
    g_c, g_r = jax.grad(lambda a, b: jnp.sum(ms.dpo_loss(a, b, rc, rr, beta=0.5)),
                        argnums=(0, 1))(pc, pr)
    assert np.all(g_c < 0) and np.all(g_r > 0)  # both terms carry gradient
    np.testing.assert_allclose(g_c, -g_r, atol=1e-6)
    # analytic: ∂/∂pc = −β·σ(−βh)
    h = ref.margin(pc, pr, rc, rr)
    np.testing.assert_allclose(g_c, -0.5 * ref.sigmoid(-0.5 * h), rtol=1e-5)


def test_ipo_minimum_at_inverse_two_tau():
    hs = np.linspace(-5, 25, 3001).astype(np.float32)  # step 0.01
    zero = np.zeros_like(hs)
    for tau, target in [(0.05, 10.0), (0.25, 2.0), (1.0, 0.5)]:
        loss = ms.ipo_loss(hs, zero, zero, zero, tau=tau)
        np.testing.assert_allclose(hs[int(np.argmin(loss))], target, atol=1e-2)
        g = jax.grad(lambda h, t=tau: ms.ipo_loss(h, 0.0, 0.0, 0.0, tau=t))(jnp.float32(target))
        np.testing.assert_allclose(g, 0.0, atol=1e-5)
    # τ = 0.05 is the bandit code's target margin 10 (tau = 1 / (2 · 10)).
    np.testing.assert_allclose(ms.ipo_loss(10.0, 0.0, 0.0, 0.0, tau=1 / (2 * 10)), 0.0,
                               atol=1e-10)


def test_zero_smoothing_equals_dpo():
    x = _random(seed=2)
    dpo = ms.dpo_loss(*x, beta=0.8)
    np.testing.assert_allclose(ms.dpo_loss(*x, beta=0.8, label_smoothing=0.0), dpo)
    np.testing.assert_allclose(ms.robust_dpo_loss(*x, beta=0.8, label_smoothing=0.0), dpo,
                               rtol=1e-6)
    assert not np.allclose(ms.robust_dpo_loss(*x, beta=0.8, label_smoothing=0.1), dpo)


def test_robust_dpo_is_unbiased_under_label_flips():
    # E over a flip with prob ε of the robust loss equals the clean DPO loss.
    x = _random(seed=3)
    eps = 0.2
    flipped = (x[1], x[0], x[3], x[2])
    expected = (1 - eps) * ms.robust_dpo_loss(*x, beta=0.6, label_smoothing=eps) + (
        eps * ms.robust_dpo_loss(*flipped, beta=0.6, label_smoothing=eps))
    np.testing.assert_allclose(expected, ms.dpo_loss(*x, beta=0.6), rtol=1e-5, atol=1e-6)


def test_beta_vmap_equals_loop():
    x = _random(seed=4)
    betas = jnp.array([0.1, 0.5, 2.0])
    vm = jax.vmap(lambda b: ms.dpo_loss(*x, beta=b, label_smoothing=0.1))(betas)
    loop = np.stack([ms.dpo_loss(*x, beta=float(b), label_smoothing=0.1) for b in betas])
    np.testing.assert_allclose(vm, loop, rtol=1e-6)
    vm = jax.vmap(lambda t: ms.ipo_loss(*x, tau=t))(betas)
    np.testing.assert_allclose(vm, np.stack([ms.ipo_loss(*x, tau=float(t)) for t in betas]),
                               rtol=1e-6)


def test_broadcasting():
    pc, pr, rc, rr = _random(shape=(4, 3), seed=5)
    out = ms.dpo_loss(pc, pr, rc[:, :1], rr[:1, :], beta=0.5)
    np.testing.assert_allclose(out, ref.dpo(pc, pr, rc[:, :1], rr[:1, :], 0.5), rtol=1e-5)


@pytest.mark.parametrize("name", ["dpo", "robust", "ipo", "slic", "simpo", "bt"])
def test_grads(name):
    x = tuple(jnp.asarray(v) for v in _random(shape=(3,), seed=6))
    fns = {
        "dpo": lambda a, b: ms.dpo_loss(a, b, x[2], x[3], beta=0.5, label_smoothing=0.1),
        "robust": lambda a, b: ms.robust_dpo_loss(a, b, x[2], x[3], beta=0.5,
                                                  label_smoothing=0.1),
        "ipo": lambda a, b: ms.ipo_loss(a, b, x[2], x[3], tau=0.3),
        "slic": lambda a, b: ms.slic_hinge_loss(a, b, x[2], x[3], beta=0.1, margin=5.0),
        "simpo": lambda a, b: ms.simpo_loss(a, b, 3.0, 2.0, beta=0.7),
        "bt": lambda a, b: ms.bradley_terry_loss(a, b, label_smoothing=0.1),
    }
    order = 2 if name in ("dpo", "ipo") else 1  # second order where it is cheap to compile
    check_grads(jax.jit(fns[name]), x[:2], order=order, modes=["rev"], atol=2e-2, rtol=2e-2,
                eps=1e-2)


def test_shape_mismatch_names_arguments():
    a, b = jnp.zeros(3), jnp.zeros(4)
    for fn in (functools.partial(ms.dpo_loss, beta=0.1),
               functools.partial(ms.robust_dpo_loss, beta=0.1, label_smoothing=0.1),
               functools.partial(ms.ipo_loss, tau=0.1),
               functools.partial(ms.slic_hinge_loss, beta=0.1)):
        with pytest.raises(ValueError, match="policy_chosen_logps.*ref_rejected_logps"):
            fn(a, a, a, b)
    with pytest.raises(ValueError, match="policy_rejected_logps"):
        ms.simpo_loss(a, b, a, a, beta=1.0)
    with pytest.raises(ValueError, match="rejected_scores"):
        ms.bradley_terry_loss(a, b)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), None])
def test_bad_hyperparameters(bad):
    x = H2
    with pytest.raises(ValueError, match="beta"):
        ms.dpo_loss(*x, beta=bad)
    with pytest.raises(ValueError, match="tau"):
        ms.ipo_loss(*x, tau=bad)
    with pytest.raises(ValueError, match="beta"):
        ms.slic_hinge_loss(*x, beta=bad)
    with pytest.raises(ValueError, match="beta"):
        ms.simpo_loss(x[0], x[1], 1, 1, beta=bad)


@pytest.mark.parametrize("eps", [0.5, 0.7, -0.1])
def test_bad_label_smoothing(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        ms.dpo_loss(*H2, beta=0.1, label_smoothing=eps)
    with pytest.raises(ValueError, match="label_smoothing"):
        ms.robust_dpo_loss(*H2, beta=0.1, label_smoothing=eps)
    with pytest.raises(ValueError, match="label_smoothing"):
        ms.bradley_terry_loss(jnp.zeros(2), jnp.zeros(2), label_smoothing=eps)


class HandValuesVariants(chex.TestCase):
    """The same hand values with and without jit (chex's variants, as optax/rlax test)."""

    @chex.all_variants(with_pmap=False)
    def test_dpo_ipo_hand_values(self):
        dpo = self.variant(functools.partial(ms.dpo_loss, beta=0.5))
        ipo = self.variant(functools.partial(ms.ipo_loss, tau=0.5))
        # h = 2: DPO −log σ(β·h) = log(1 + e^−1) = 0.31326169; IPO (2 − 1/(2·0.5))² = 1
        chex.assert_trees_all_close((dpo(*H2), ipo(*H2)), (0.31326169, 1.0), atol=1e-6)

    @chex.all_variants(with_pmap=False)
    def test_batched_shape_is_per_example(self):
        x = _random(shape=(4, 3))
        out = self.variant(functools.partial(ms.dpo_loss, beta=0.1))(*x)
        chex.assert_shape(out, (4, 3))
        chex.assert_tree_all_finite(out)
