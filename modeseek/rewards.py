"""Rewards on tokens: the length rules, and where a reward model's head is read. Pure, jit-able.

    negative_length(response_mask [..., L]) -> [...] float32          r = −len(y)
    negative_length_distance(response_mask [..., L], mode) -> [...]   r = −|len(y) − mode|
    pooling_index(mask [B, L], tokens=None, pad_id=None) -> [B]     where a reward model reads
    pool_at_last_token(values [B, L], mask [B, L], tokens=None, pad_id=None) -> [B]

len(y) = Σ_t response_mask[..., t]: the number of response tokens *including* the EOS that ends
the response, the convention of the data pipeline (`llm.data.encoding`: response ids are
encode(text) + [eos]) and of the sampler (`response_mask` is 1 up to and including EOS; a
response that never stops has length T = max_new_tokens). These are the gold rewards of the
paper's length tasks (PAPER §5): Min Length and Skew Length use −len, Mode Length uses
−|len − mode|.

`mode` may be a Python number or a traced array broadcastable to the leading shape, so a sweep
over modes is a `vmap`. A reward model scores a sequence with a per-position head read at one
slot (`pooling_index`): the last real token, or transformers' last token that is not pad.
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


def pooling_index(mask_BxL: jax.Array, tokens_BxL: jax.Array | None = None,
                     pad_id: int | None = None) -> jax.Array:
    """Where a sequence reward model reads its score: per row the rightmost slot t with
    mask[t] = 1 (and, given `pad_id`, tokens[t] ≠ pad_id), i = argmax_t t · valid[t]; 0 for a
    row with no such slot. With `pad_id` this is transformers' sequence-classification pooling
    (the rightmost token that is not pad_token_id), which skips a trailing EOS when the EOS id
    is the pad id; without it, the last real token (left, right or middle padding alike)."""
    valid_BxL = jnp.asarray(mask_BxL).astype(bool)
    if pad_id is not None:
        valid_BxL &= jnp.asarray(tokens_BxL) != pad_id
    slots_L = jnp.arange(valid_BxL.shape[-1], dtype=jnp.int32)
    return jnp.argmax(slots_L * valid_BxL.astype(jnp.int32), axis=-1)


def pool_at_last_token(values_BxL: jax.Array, mask_BxL: jax.Array,
                       tokens_BxL: jax.Array | None = None,
                       pad_id: int | None = None) -> jax.Array:
    """values[b, i_b] at `pooling_index` (the reward of a per-position head), shape B."""
    index_B = pooling_index(mask_BxL, tokens_BxL, pad_id)
    return jnp.take_along_axis(values_BxL, index_B[:, None], axis=1)[:, 0]
