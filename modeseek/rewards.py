"""Rule rewards on token masks: pure, jit-able, any leading shape.

    negative_length(response_mask [..., L]) -> [...] float32          r = −len(y)
    negative_length_distance(response_mask [..., L], mode) -> [...]   r = −|len(y) − mode|

len(y) = Σ_t response_mask[..., t]: the number of response tokens *including* the EOS that ends
the response, the convention of the data pipeline (`llm.data.encoding`: response ids are
encode(text) + [eos]) and of the sampler (`response_mask` is 1 up to and including EOS; a
response that never stops has length T = max_new_tokens). These are the gold rewards of the
paper's length tasks (PAPER §5): Min Length and Skew Length use −len, Mode Length uses
−|len − mode|.

`mode` may be a Python number or a traced array broadcastable to the leading shape, so a sweep
over modes is a `vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def response_length(response_mask: jax.Array) -> jax.Array:
    """len(y) = Σ_t mask[..., t] as float32 (padding never counts; EOS does)."""
    return jnp.sum(jnp.asarray(response_mask).astype(jnp.float32), axis=-1)


def negative_length(response_mask: jax.Array) -> jax.Array:
    """Min/Skew Length gold reward r(y) = −len(y), shape response_mask.shape[:-1], float32."""
    return -response_length(response_mask)


def negative_length_distance(response_mask: jax.Array, mode) -> jax.Array:
    """Mode Length gold reward r(y) = −|len(y) − mode|, shape response_mask.shape[:-1]."""
    return -jnp.abs(response_length(response_mask) - jnp.asarray(mode, jnp.float32))
