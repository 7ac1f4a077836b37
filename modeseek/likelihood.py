"""Likelihood-based losses: Pref-FT (NLL), Best-of-N / filtered BC with optional negative
gradient, and reward-weighted regression (RWR).

Group losses take `logps` and `rewards` of shape [..., N] (N scored samples of one prompt on
the last axis) and return one value per prompt, [...]; `where` ([..., N], optional) marks the
valid samples, so masking equals slicing. Weights derived from rewards are constants
(stop-gradient): only log π carries gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from modeseek._checks import check_positive, check_same_shape
from modeseek.advantages import zscore_advantages
from modeseek.logprobs import masked_mean


def nll_loss(logps):
    """Pref-FT / SFT: −log π(y) per example (y = the preferred response)."""
    return -jnp.asarray(logps, jnp.float32)


def _valid(rewards, where):
    return jnp.ones(jnp.shape(rewards), bool) if where is None else jnp.asarray(where, bool)


def reward_ranks(rewards, where=None):
    """Rank of each sample by reward within its group: 0 = best; invalid samples rank last.

    Ties keep their original order (stable sort), so exactly k samples have rank < k.
    """
    valid = _valid(rewards, where)
    keyed = jnp.where(valid, jnp.asarray(rewards, jnp.float32), -jnp.inf)
    order = jnp.argsort(-keyed, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def best_of_n_loss(logps, rewards, *, top_k=1, negative=None, negative_coef=1.0,
                   ref_logps=None, negative_clip=None, where=None):
    """Best-of-N / filtered behaviour cloning, optionally with a negative gradient.

        loss = −mean_{i ∈ top-k} log π(y_i)                                   (negative=None)
             + c · log π(y_worst)                                           (negative="worst")
             + c · mean_{i: r_i < r_best} log π(y_i)                   (negative="all_worse")

    c = `negative_coef`. With `ref_logps` the negative term uses the log-ratio
    log π − log π_ref, floored at −`negative_clip` when given ("reference-constrained": a loser
    stops being pushed once it is `negative_clip` nats below the reference; our choice of
    constraint, since the authors' exact variant is not published). Without a floor the
    negative term is unbounded below, as in the paper's plain variant.

    Shapes: logps, rewards, where, ref_logps [..., N] → [...]. `top_k` is static.
    """
    check_same_shape(logps=logps, rewards=rewards)
    if negative not in (None, "worst", "all_worse"):
        raise ValueError(f"negative must be None, 'worst' or 'all_worse', got {negative!r}")
    logps = jnp.asarray(logps, jnp.float32)
    valid = _valid(rewards, where)
    ranks = reward_ranks(rewards, valid)
    chosen = (ranks < top_k) & valid
    loss = -masked_mean(logps, chosen, axis=-1)
    if negative is None:
        return loss
    neg = logps if ref_logps is None else logps - jnp.asarray(ref_logps, jnp.float32)
    if negative_clip is not None:
        neg = jnp.maximum(neg, -negative_clip)
    rewards = jnp.asarray(rewards, jnp.float32)
    # Negatives are strictly worse than the best and never among the cloned top-k, so no
    # sample is pulled up and pushed down at once (ties with the best are left alone).
    best = jnp.max(jnp.where(valid, rewards, -jnp.inf), axis=-1, keepdims=True)
    worse = valid & (rewards < best) & ~chosen
    if negative == "worst":
        num_valid = jnp.sum(valid, axis=-1, keepdims=True)
        is_neg = worse & (ranks == num_valid - 1)
    else:
        is_neg = worse
    has_neg = jnp.any(is_neg, axis=-1)
    return loss + jnp.where(has_neg, negative_coef * masked_mean(neg, is_neg, axis=-1), 0.0)


def rwr_weights(rewards, *, beta, normalize="none", weight_clip=None, where=None):
    """Reward-weighted-regression weights w_i = exp(r̃_i / β), r̃ = r or its per-prompt z-score.

    `normalize="zscore"` standardises rewards over the valid samples of each prompt first (the
    authors' bandit code); `weight_clip` caps w at that value (their LLM code clamps to 10).
    Returned under stop-gradient.
    """
    check_positive("beta", beta)
    if normalize not in ("none", "zscore"):
        raise ValueError(f"normalize must be 'none' or 'zscore', got {normalize!r}")
    rewards = jnp.asarray(rewards, jnp.float32)
    if normalize == "zscore":
        rewards = zscore_advantages(rewards, where=where)
    w = jnp.exp(rewards / beta)
    if weight_clip is not None:
        w = jnp.minimum(w, weight_clip)
    return jax.lax.stop_gradient(w)


def rwr_loss(logps, rewards, *, beta, normalize="none", weight_clip=None, where=None):
    """Reward-weighted regression (Peters & Schaal, 2007), as in Tajwar et al. §3:

        loss = −mean_i exp(r̃_i / β) · log π(y_i)

    All weights are positive: RWR has no negative gradient. Shapes [..., N] → [...].
    """
    check_same_shape(logps=logps, rewards=rewards)
    w = rwr_weights(rewards, beta=beta, normalize=normalize, weight_clip=weight_clip,
                    where=where)
    return -masked_mean(w * jnp.asarray(logps, jnp.float32), _valid(rewards, where), axis=-1)
