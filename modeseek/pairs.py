"""Preference pairs from N scored samples per prompt, as N×N masks (never Python loops).

A pair mask M has shape [..., N, N] with M[..., i, j] = True when sample i is the winner and
sample j the loser of a pair used for training. Pairwise losses are then evaluated on all N×N
combinations at once by broadcasting (`pairwise`) and reduced under the mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _valid(rewards, where):
    return jnp.ones(jnp.shape(rewards), bool) if where is None else jnp.asarray(where, bool)


def ranked_pairs_mask(rewards, *, threshold=0.0, where=None):
    """All N(N−1)/2 pairs ranked by reward: M[i, j] = r_i − r_j > threshold (both valid).

    With threshold = 0 ties form no pair; a larger threshold drops pairs whose reward gap is
    at most `threshold` (the authors' optional filter).
    """
    r = jnp.asarray(rewards, jnp.float32)
    valid = _valid(rewards, where)
    gap = r[..., :, None] - r[..., None, :]
    return (gap > threshold) & valid[..., :, None] & valid[..., None, :]


def best_vs_worst_mask(rewards, *, threshold=0.0, where=None):
    """One pair per prompt: the best sample against the worst (first in order on ties)."""
    r = jnp.asarray(rewards, jnp.float32)
    valid = _valid(rewards, where)
    best = jnp.argmax(jnp.where(valid, r, -jnp.inf), axis=-1)
    worst = jnp.argmin(jnp.where(valid, r, jnp.inf), axis=-1)
    n = r.shape[-1]
    one_hot = lambda i: jax.nn.one_hot(i, n, dtype=bool)
    mask = one_hot(best)[..., :, None] & one_hot(worst)[..., None, :]
    return mask & ranked_pairs_mask(r, threshold=threshold, where=valid)


def random_pairs_mask(key, rewards, *, threshold=0.0, where=None):
    """A random perfect matching of the N samples into ⌊N/2⌋ pairs, oriented by reward (of the
    valid samples only when `where` is given; tied or sub-threshold pairs are dropped).

    Shapes: rewards [..., N]; the permutation is drawn independently per leading index.
    """
    r = jnp.asarray(rewards, jnp.float32)
    n = r.shape[-1]
    batch = r.shape[:-1]
    # Invalid samples sort last, so the valid ones are matched among themselves.
    noise = jnp.where(_valid(rewards, where), jax.random.uniform(key, batch + (n,)), 2.0)
    perm = jnp.argsort(noise, axis=-1)
    first, second = perm[..., 0:n - 1:2], perm[..., 1:n:2]
    one_hot = lambda i: jax.nn.one_hot(i, n, dtype=bool)
    matched = jnp.any(one_hot(first)[..., :, :, None] & one_hot(second)[..., :, None, :], -3)
    matched = matched | jnp.swapaxes(matched, -1, -2)
    return matched & ranked_pairs_mask(r, threshold=threshold, where=where)


def bradley_terry_labels(key, rewards_a, rewards_b, *, temperature=1.0):
    """Stochastic preference labels: True (a ≻ b) with probability σ((r_a − r_b)/temperature)."""
    p = jax.nn.sigmoid((jnp.asarray(rewards_a, jnp.float32) - rewards_b) / temperature)
    return jax.random.bernoulli(key, p)


def pairwise(values):
    """(winner view, loser view) of [..., N] values, broadcasting to [..., N, N]."""
    return values[..., :, None], values[..., None, :]


def pairwise_loss(loss_fn, policy_logps, ref_logps, pair_mask, **hparams):
    """Evaluate a contrastive loss on every masked pair of a group.

    Args:
      loss_fn: e.g. `dpo_loss`, called as loss_fn(pc, pr, rc, rr, **hparams) on [..., N, N].
      policy_logps, ref_logps: [..., N] sequence log-probs of the N samples.
      pair_mask: [..., N, N] from `ranked_pairs_mask` and friends.

    Returns:
      (loss_sum [...], num_pairs [...]): sum over masked pairs and their count, so the caller
      can average per prompt or over all pairs of a batch.
    """
    pc, pr = pairwise(policy_logps)
    rc, rr = pairwise(ref_logps)
    losses = loss_fn(pc, pr, rc, rr, **hparams)
    losses = jnp.where(pair_mask, losses, 0.0)
    return jnp.sum(losses, axis=(-2, -1)), jnp.sum(pair_mask, axis=(-2, -1))
