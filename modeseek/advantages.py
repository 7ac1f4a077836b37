"""Advantage estimators: group baselines (mean, leave-one-out, z-score), a running reward
normaliser that stays correct across epochs and reuse steps, and GAE.

Group estimators take rewards [..., N] (N samples of one prompt on the last axis) and an
optional validity mask `where` of the same shape; invalid samples get advantage 0 and do not
enter the statistics.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from modeseek.logprobs import masked_mean


def _prep(rewards, where):
    rewards = jnp.asarray(rewards, jnp.float32)
    valid = jnp.ones(rewards.shape, bool) if where is None else jnp.asarray(where, bool)
    return rewards, valid


def mean_baseline_advantages(rewards, *, where=None):
    """A_i = r_i − mean_j r_j over the prompt's valid samples."""
    rewards, valid = _prep(rewards, where)
    mean = masked_mean(rewards, valid, axis=-1)[..., None]
    return jnp.where(valid, rewards - mean, 0.0)


def rloo_advantages(rewards, *, where=None):
    """Leave-one-out baseline (Kool et al., 2019): A_i = r_i − mean_{j≠i} r_j.

    Equals N/(N−1) · (r_i − mean r). A prompt with a single valid sample gets A = 0.
    """
    rewards, valid = _prep(rewards, where)
    n = jnp.sum(valid, axis=-1, keepdims=True).astype(jnp.float32)
    total = jnp.sum(jnp.where(valid, rewards, 0.0), axis=-1, keepdims=True)
    loo_mean = (total - rewards) / jnp.maximum(n - 1.0, 1.0)
    return jnp.where(valid & (n > 1), rewards - loo_mean, 0.0)


def zscore_advantages(rewards, *, where=None, eps=1e-6):
    """A_i = (r_i − mean r) / (std r + eps), per prompt (population std over valid samples)."""
    rewards, valid = _prep(rewards, where)
    mean = masked_mean(rewards, valid, axis=-1)[..., None]
    var = masked_mean(jnp.square(rewards - mean), valid, axis=-1)[..., None]
    return jnp.where(valid, (rewards - mean) / (jnp.sqrt(var) + eps), 0.0)


def nonnegative_advantages(advantages, *, where=None):
    """Shift each prompt's advantages so the smallest valid one is 0: the "no negative gradient"
    ablation of REINFORCE (every sample's likelihood is pushed up or left alone)."""
    advantages, valid = _prep(advantages, where)
    low = jnp.min(jnp.where(valid, advantages, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(valid, advantages - low, 0.0)


class RunningStats(NamedTuple):
    """Count, mean and sum of squared deviations (M2) of every value seen so far."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


def running_stats_init() -> RunningStats:
    """Empty statistics (count 0)."""
    zero = jnp.zeros((), jnp.float32)
    return RunningStats(count=zero, mean=zero, m2=zero)


def running_stats_update(stats: RunningStats, values, *, where=None) -> RunningStats:
    """Merge a batch into the statistics (Chan et al.'s parallel Welford update).

    Call once per **newly sampled** batch, never per reuse step or epoch: the statistics then
    equal those of all distinct samples seen, however often each is trained on (the authors'
    running normaliser broke after the first epoch by re-counting samples).
    """
    values, valid = _prep(values, where)
    n_b = jnp.sum(valid).astype(jnp.float32)
    mean_b = masked_mean(values, valid)
    m2_b = jnp.sum(jnp.where(valid, jnp.square(values - mean_b), 0.0))
    n = stats.count + n_b
    delta = mean_b - stats.mean
    safe_n = jnp.maximum(n, 1.0)
    mean = stats.mean + delta * n_b / safe_n
    m2 = stats.m2 + m2_b + jnp.square(delta) * stats.count * n_b / safe_n
    return RunningStats(count=n, mean=mean, m2=m2)


def running_stats_normalize(stats: RunningStats, values, *, eps=1e-6, clip=None):
    """(v − mean) / (std + eps) under the running statistics, optionally clipped to ±clip."""
    std = jnp.sqrt(stats.m2 / jnp.maximum(stats.count, 1.0))
    out = (jnp.asarray(values, jnp.float32) - stats.mean) / (std + eps)
    return out if clip is None else jnp.clip(out, -clip, clip)


def gae_advantages(rewards, values, mask, *, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al., 2016) over right-padded sequences.

        δ_t = r_t + γ · m_{t+1} · V_{t+1} − V_t,    A_t = δ_t + γλ · m_{t+1} · A_{t+1}

    Shapes: rewards, values, mask [..., T] (mask 1 on real steps, a contiguous prefix);
    returns (advantages, returns = A + V), both 0 on padding.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    next_values = jnp.concatenate([values[..., 1:], jnp.zeros_like(values[..., :1])], -1)
    next_mask = jnp.concatenate([mask[..., 1:], jnp.zeros_like(mask[..., :1])], -1)
    deltas = rewards + gamma * next_mask * next_values - values

    def step(carry, inputs):
        delta, m_next = inputs
        adv = delta + gamma * lam * m_next * carry
        return adv, adv

    xs = (jnp.moveaxis(deltas, -1, 0), jnp.moveaxis(next_mask, -1, 0))
    _, adv = jax.lax.scan(step, jnp.zeros(deltas.shape[:-1]), xs, reverse=True)
    adv = jnp.moveaxis(adv, 0, -1) * mask
    return adv, (adv + values) * mask
