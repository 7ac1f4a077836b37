"""Metrics: DPO-style implicit rewards and margins (names as in TRL/tunix), and exact
divergences between categorical distributions given as log-probabilities."""

from __future__ import annotations

import jax.numpy as jnp

from modeseek.logprobs import masked_mean


def implicit_rewards(policy_logps, ref_logps, *, beta):
    """DPO's implicit reward β · (log π(y) − log π_ref(y))."""
    return beta * (jnp.asarray(policy_logps, jnp.float32) - ref_logps)


def preference_metrics(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                       ref_rejected_logps, *, beta=1.0, where=None):
    """Batch means of the usual preference-training diagnostics.

    Keys: rewards/chosen, rewards/rejected (implicit rewards), rewards/margin,
    rewards/accuracy (fraction with chosen reward > rejected), logratio/chosen,
    logratio/rejected (log π − log π_ref; the paper tracks whether the *winner's* falls),
    logps/chosen, logps/rejected.
    """
    lr_c = jnp.asarray(policy_chosen_logps, jnp.float32) - ref_chosen_logps
    lr_r = jnp.asarray(policy_rejected_logps, jnp.float32) - ref_rejected_logps
    mean = lambda x: masked_mean(x, where)
    return {
        "rewards/chosen": mean(beta * lr_c),
        "rewards/rejected": mean(beta * lr_r),
        "rewards/margin": mean(beta * (lr_c - lr_r)),
        "rewards/accuracy": mean((lr_c > lr_r).astype(jnp.float32)),
        "logratio/chosen": mean(lr_c),
        "logratio/rejected": mean(lr_r),
        "logps/chosen": mean(policy_chosen_logps),
        "logps/rejected": mean(policy_rejected_logps),
    }


def kl_divergence(logp, logq):
    """KL(p ‖ q) = Σ_a p(a) (log p(a) − log q(a)) over the last axis, exact; 0·log 0 = 0."""
    p = jnp.exp(logp)
    pos = p > 0  # inner wheres keep the gradient finite where log p = −inf
    diff = jnp.where(pos, logp, 0.0) - jnp.where(pos, logq, 0.0)
    return jnp.sum(jnp.where(pos, p * diff, 0.0), axis=-1)


def entropy(logp):
    """H(p) = −Σ_a p(a) log p(a) over the last axis."""
    p = jnp.exp(logp)
    pos = p > 0
    return -jnp.sum(jnp.where(pos, p * jnp.where(pos, logp, 0.0), 0.0), axis=-1)


def expectation(logp, values):
    """E_p[values] = Σ_a p(a) · values(a) over the last axis."""
    return jnp.sum(jnp.exp(logp) * values, axis=-1)
