"""Fast categorical sampling by inverse CDF.

`jax.random.categorical` draws one Gumbel variate per category (A random numbers per sample);
on CPU generating them dominates a bandit step (≈ 370 µs for 10×10 samples over 100 actions vs
≈ 20 µs here). Inverse-CDF sampling draws one uniform per sample:

    a = #{k : F(k) < u},   F(k) = Σ_{j ≤ k} p_j,   u ~ U[0, 1)

Same distribution as `jax.random.categorical`, different draws for the same key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_categorical(key, logits, shape=None):
    """Draw category indices from softmax(logits) over the last axis.

    Args:
      key: typed PRNG key.
      logits: [..., A] unnormalised log-probabilities (−inf allowed for impossible categories).
      shape: output shape; must end with logits.shape[:-1] broadcastable (like
        `jax.random.categorical`); default logits.shape[:-1].

    Returns:
      int32 indices of `shape`.
    """
    batch = logits.shape[:-1]
    shape = batch if shape is None else tuple(shape)
    cdf = jnp.cumsum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
    # Expand the batch dims of the CDF to broadcast against `shape` (leading sample dims).
    lead = len(shape) - len(batch)
    cdf = cdf.reshape((1,) * lead + cdf.shape)
    u = jax.random.uniform(key, shape, jnp.float32) * cdf[..., -1]
    idx = jnp.sum(cdf < u[..., None], axis=-1)
    # Rounding can leave u ≥ F(A−1) in float32: clamp to the last category with mass.
    return jnp.minimum(idx, logits.shape[-1] - 1).astype(jnp.int32)
