"""Token-level PPO for sequence generation (Ziegler et al., 2019; Ouyang et al., 2022): the one
PPO of every transformer tier, registered in the taxonomy as the `ppo` algorithm's
`token_objective`.

Arrays are laid out [P, N, S] like `modeseek.engine.Rollout`: position t of the sequence
holds token y_t, its log-prob (from the logits at t − 1) and the value V(s_t) of the prefix
before it (the value head read at t − 1); `response_mask` marks the response tokens (a
contiguous block, EOS included).

Per-token reward (KL-shaped, k1 estimator against the reference):
    r_t = −kl_coef · (log π_old(y_t) − log π_ref(y_t))   + score(x, y) at the last token,
with π_old the distribution actually sampled from (`Rollout.sampling_logps`). Then
    A, R = GAE(r, V_old; γ, λ)              (`modeseek.gae_advantages`),
    A ← (A − mean A) / (std A + 1e-8)        whitened over the batch's response tokens,
    loss = mean_t max(−A ρ_t, −A clip(ρ_t, 1 ± ε)) + vf_coef · mean_t ½ max((V − R)², (V_clip − R)²)
with ρ_t = π_θ(y_t) / π_old(y_t), π_θ evaluated through the same sampling transform
(temperature, top-k/top-p mask) as π_old, and means over the minibatch's response tokens.

Adaptive KL controller (Ziegler et al.): after each iteration
    kl_coef ← kl_coef · (1 + clip(KL / kl_target − 1, −0.2, 0.2) · samples / kl_horizon),
kl_target = 0 keeps the coefficient fixed.

The value function is either a head on the policy's trunk or a separate critic (decoder +
head), `modeseek.engine.PolicyModel(value="shared" | "critic")`.
"""

from __future__ import annotations

import jax.numpy as jnp

from modeseek.advantages import gae_advantages
from modeseek.logprobs import masked_mean
from modeseek.policy_gradient import clipped_value_loss, ppo_clip_fraction, ppo_clip_loss

WHITEN_EPS = 1e-8


def last_token(mask):
    """1.0 at the last 1 of each row's contiguous mask block (along the last axis), else 0."""
    m = jnp.asarray(mask, jnp.float32)
    after = jnp.concatenate([m[..., 1:], jnp.zeros_like(m[..., :1])], -1)
    return m * (1.0 - after)


def whiten(values, mask, eps=WHITEN_EPS):
    """(x − mean) / (std + eps) over the masked entries (population std); 0 elsewhere."""
    mean = masked_mean(values, mask)
    std = jnp.sqrt(masked_mean(jnp.square(values - mean), mask))
    return jnp.where(jnp.asarray(mask, bool), (values - mean) / (std + eps), 0.0)


def ppo_targets(scores, sampling_logps, ref_logps, old_values, response_mask, *, kl_coef,
                gamma, gae_lambda):
    """(advantages, returns, per-sample KL) from a scored rollout.

    Shapes: scores [...], the rest [..., S]; returns [..., S], [..., S], [...]. Advantages are
    whitened over every response token of the batch; returns are GAE's A + V (unwhitened)."""
    m = jnp.asarray(response_mask, jnp.float32)
    kl_tok = (sampling_logps - ref_logps) * m
    rewards = -kl_coef * kl_tok + last_token(m) * jnp.asarray(scores, jnp.float32)[..., None]
    adv, returns = gae_advantages(rewards, old_values * m, m, gamma=gamma, lam=gae_lambda)
    return whiten(adv, m), returns, jnp.sum(kl_tok, -1)


def ppo_token_objective(logps, values, batch, hparams):
    """PPO loss on per-token arrays [P, N, S]: `logps` (π_θ through the sampling transform),
    `values` (V_θ), and `batch` with `sampling_logps`, `values` (at sampling time),
    `advantages`, `returns` and `response_mask`. Returns (loss, metrics)."""
    m = batch.response_mask
    old = batch.sampling_logps
    pg = masked_mean(ppo_clip_loss(logps, old, batch.advantages, clip_eps=hparams["clip_eps"]),
                     m)
    vf = masked_mean(clipped_value_loss(values, batch.values, batch.returns,
                                        clip_eps=hparams["value_clip"]), m)
    clipfrac = masked_mean(ppo_clip_fraction(logps, old, clip_eps=hparams["clip_eps"]), m)
    return pg + hparams["vf_coef"] * vf, {"ppo/policy_loss": pg, "ppo/value_loss": vf,
                                          "ppo/clip_fraction": clipfrac}


def adaptive_kl_coef(kl_coef, observed_kl, *, kl_target, kl_horizon, num_samples):
    """Ziegler et al.'s proportional controller (see module docstring); jit-able, and
    kl_target ≤ 0 returns `kl_coef` unchanged."""
    kl_coef = jnp.asarray(kl_coef, jnp.float32)
    safe_target = jnp.where(kl_target > 0, kl_target, 1.0)
    error = jnp.clip(observed_kl / safe_target - 1.0, -0.2, 0.2)
    updated = kl_coef * (1.0 + error * num_samples / kl_horizon)
    return jnp.where(kl_target > 0, updated, kl_coef)

