"""Token-level PPO (`modeseek.ppo`): KL-shaped rewards, GAE over a response block, whitening,
the clipped policy and value losses, and the adaptive KL controller, against hand values and
a plain NumPy reference written from the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

import modeseek as ms
from modeseek import ppo


def _block_batch(seed=0, B=4, S=9):
    """Rows with a prompt of 2–3 tokens then a response block of 1..S−3 tokens."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, S), bool)
    for b in range(B):
        start = 2 + b % 2
        mask[b, start:start + 1 + rng.integers(0, S - start)] = True
    f = lambda *shape: rng.normal(size=shape).astype(np.float32)
    return dict(mask=mask, scores=f(B), sampling=f(B, S) - 2, ref=f(B, S) - 2,
                values=f(B, S), logps=f(B, S) - 2, new_values=f(B, S))


def _numpy_targets(d, kl_coef, gamma, lam):
    """Per row: shaped rewards on the response block, GAE by a Python loop over it (the block
    is a prefix episode after dropping the prompt), whitening over all response tokens."""
    B, S = d["mask"].shape
    adv, ret, kl = np.zeros((B, S)), np.zeros((B, S)), np.zeros(B)
    for b in range(B):
        idx = np.flatnonzero(d["mask"][b])
        k = d["sampling"][b, idx].astype(np.float64) - d["ref"][b, idx]
        r = -kl_coef * k
        r[-1] += d["scores"][b]
        a, rt = ref.gae(r[None], d["values"][b, idx][None], np.ones((1, len(idx))), gamma, lam)
        adv[b, idx], ret[b, idx], kl[b] = a[0], rt[0], k.sum()
    m = d["mask"]
    mean = adv[m].mean()
    std = adv[m].std()
    return np.where(m, (adv - mean) / (std + 1e-8), 0.0), ret, kl


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5)])
def test_targets_match_numpy_gae_reference(gamma, lam):
    d = _block_batch()
    adv, ret, kl = jax.jit(lambda *a: ppo.ppo_targets(*a, kl_coef=0.3, gamma=gamma,
                                                      gae_lambda=lam))(
        d["scores"], d["sampling"], d["ref"], d["values"], d["mask"])
    want_adv, want_ret, want_kl = _numpy_targets(d, 0.3, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kl, want_kl, rtol=1e-5, atol=1e-5)


def test_targets_hand_values():
    """One row, prompt of 1 token, response of 2: V = (·, 0.5, 0.25), γ = 1, λ = 1, kl_coef 0,
    score 1 → A = (1 − 0.5, 1 − 0.25) before whitening, returns = (1, 1)."""
    mask = np.array([[False, True, True]])
    zeros = np.zeros((1, 3), np.float32)
    values = np.array([[0.0, 0.5, 0.25]], np.float32)
    adv, ret, _ = ppo.ppo_targets(np.float32([1.0]), zeros, zeros, values, mask, kl_coef=0.0,
                                  gamma=1.0, gae_lambda=1.0)
    np.testing.assert_allclose(ret, [[0.0, 1.0, 1.0]], atol=1e-6)
    raw = np.array([0.5, 0.75])
    np.testing.assert_allclose(adv[0, 1:], (raw - raw.mean()) / (raw.std() + 1e-8), rtol=1e-5)
    assert adv[0, 0] == 0


def test_token_objective_matches_numpy_clip_and_value_losses():
    d = _block_batch(1)
    adv, ret, _ = ppo.ppo_targets(d["scores"], d["sampling"], d["ref"], d["values"], d["mask"],
                                  kl_coef=0.1, gamma=1.0, gae_lambda=0.95)
    hp = dict(ms.DEFAULT_HPARAMS, clip_eps=0.15, value_clip=0.3, vf_coef=0.7)
    B, S = d["mask"].shape
    batch = ms.Rollout(tokens=np.zeros((B, S), np.int32), attention_mask=d["mask"],
                       response_mask=d["mask"], sampling_logps=d["sampling"],
                       ref_token_logps=d["ref"], rewards=d["scores"], lengths=d["scores"],
                       valid=np.ones(B, bool), values=d["values"], advantages=adv, returns=ret)
    loss, metrics = jax.jit(ppo.ppo_token_objective)(d["logps"], d["new_values"], batch, hp)
    m = d["mask"]
    pg = ref.ppo_clip(d["logps"], d["sampling"], np.asarray(adv), 0.15)[m].mean()
    vf = ref.clipped_value(d["new_values"], d["values"], np.asarray(ret), 0.3)[m].mean()
    np.testing.assert_allclose(metrics["ppo/policy_loss"], pg, rtol=1e-5)
    np.testing.assert_allclose(metrics["ppo/value_loss"], vf, rtol=1e-5)
    np.testing.assert_allclose(loss, pg + 0.7 * vf, rtol=1e-5)
    ratio = np.exp(d["logps"] - d["sampling"])[m]
    np.testing.assert_allclose(metrics["ppo/clip_fraction"],
                               np.mean(np.abs(ratio - 1) > 0.15), rtol=1e-6)


def test_adaptive_kl_controller():
    f = jax.jit(lambda c, kl, t: ppo.adaptive_kl_coef(c, kl, kl_target=t, kl_horizon=100.0,
                                                      num_samples=10))
    # KL 3× the target: error clipped at +0.2 → 0.1 · (1 + 0.2 · 10 / 100)
    np.testing.assert_allclose(f(0.1, 3.0, 1.0), 0.1 * 1.02, rtol=1e-6)
    np.testing.assert_allclose(f(0.1, 0.9, 1.0), 0.1 * (1 - 0.1 * 0.1), rtol=1e-6)
    np.testing.assert_allclose(f(0.1, 5.0, 0.0), 0.1, rtol=1e-7)  # target 0: fixed


def test_last_token_and_whiten():
    m = jnp.array([[0, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(ppo.last_token(m), [[0, 0, 1, 0], [0, 0, 0, 1]])
    x = jnp.array([[9.0, 1.0, 3.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    w = ppo.whiten(x, jnp.array([[0, 1, 1, 0], [0, 0, 0, 0]]))
    np.testing.assert_allclose(w, [[0, -1, 1, 0], [0, 0, 0, 0]], atol=1e-6)
