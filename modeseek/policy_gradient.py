"""Policy-gradient losses: REINFORCE, PPO's clipped surrogate, clipped value loss, and the
per-sample KL estimators used as penalties.

Written for per-sample (or per-token) values and elementwise, so they vmap and broadcast; the
caller reduces. Advantages are always treated as constants (explicit stop-gradient), as in rlax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from modeseek._checks import check_positive, check_same_shape


def reinforce_loss(logps, advantages):
    """REINFORCE (Williams, 1992): loss = −sg(A) · log π(y).

    Samples with A < 0 have their likelihood pushed down (a negative gradient).
    """
    check_same_shape(logps=logps, advantages=advantages)
    return -jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32)) * logps


def ppo_clip_loss(logps, old_logps, advantages, *, clip_eps=0.2):
    """PPO's clipped surrogate (Schulman et al., 2017), token- or sequence-level:

        ρ = exp(log π − log π_old),   loss = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)).

    Convention: π_old is the policy **at sampling time** (the sampler's log-probs), not the
    reference policy; the KL to the reference is a separate penalty (`kl_penalty`).
    """
    check_positive("clip_eps", clip_eps)
    check_same_shape(logps=logps, old_logps=old_logps, advantages=advantages)
    adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
    ratio = jnp.exp(logps - jax.lax.stop_gradient(old_logps))
    return jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps))


def ppo_clip_fraction(logps, old_logps, *, clip_eps=0.2):
    """1 where the ratio lies outside [1 − ε, 1 + ε] (a diagnostic), else 0."""
    ratio = jnp.exp(logps - old_logps)
    return (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32)


def clipped_value_loss(values, old_values, returns, *, clip_eps=0.2):
    """PPO value loss: ½ · max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)."""
    check_same_shape(values=values, old_values=old_values, returns=returns)
    returns = jax.lax.stop_gradient(returns)
    clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    return 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns))


def kl_penalty(logps, ref_logps, *, estimator="k1"):
    """Per-sample estimate of KL(π ‖ π_ref) from samples y ~ π (Schulman, 2020):

        k1 = log π − log π_ref,   k2 = ½ (log π − log π_ref)²,   k3 = e^{−d} − 1 + d with
        d = log π − log π_ref.

    k1 is unbiased; k2 and k3 are low-variance; k3 is unbiased and non-negative.
    """
    check_same_shape(logps=logps, ref_logps=ref_logps)
    d = jnp.asarray(logps, jnp.float32) - jnp.asarray(ref_logps, jnp.float32)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * jnp.square(d)
    if estimator == "k3":
        return jnp.expm1(-d) + d
    raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
