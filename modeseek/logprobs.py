"""Log-probabilities of tokens and sequences: the one helper every tier uses.

Convention (causal LMs): the logits at position t−1 predict the token at position t. So for
tokens y_0 … y_{L−1},

    token_logprobs[b, t] = log softmax(logits[b, t−1])[y_t]      for t ≥ 1,
    token_logprobs[b, 0] = 0                                     (nothing predicts y_0),

and the sequence log-probability is the masked **sum** (not the mean) over response tokens,

    sequence_logprobs[b] = Σ_t mask[b, t] · token_logprobs[b, t].

`mask` marks the tokens whose probability counts (the response, never prompt or padding); it is
aligned with `tokens`, so mask[:, 0] is ignored. Log-softmax is taken in float32 whatever the
logits' dtype.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from modeseek._checks import check_same_shape


def token_logprobs(logits, tokens, mask=None):
    """Per-token log p(tokens[t] | tokens[<t]) aligned with `tokens`.

    Args:
      logits: [..., L, V] next-token logits (position t−1 predicts token t).
      tokens: [..., L] int token ids.
      mask: optional [..., L] (bool or 0/1); positions where it is 0 give 0.

    Returns:
      [..., L] float32; position 0 is always 0.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"logits {list(logits.shape)} must be tokens {list(tokens.shape)} + [vocab]"
        )
    if mask is not None:
        check_same_shape(tokens=tokens, mask=mask)
    # log softmax(x)[y] = x[y] − logsumexp(x), without a [.., L, V] log-softmax (or a sliced
    # copy of the logits) in memory: one reduction and one gather over the vocabulary, and the
    # gradient is a single softmax buffer. Position t gathers token t+1 (the last position
    # gathers a dummy that is dropped).
    logits_xLxV = logits.astype(jnp.float32)
    lse_xL = jax.nn.logsumexp(logits_xLxV, axis=-1)
    next_xL = jnp.concatenate([tokens[..., 1:], tokens[..., :1]], axis=-1)
    picked_xL = jnp.take_along_axis(logits_xLxV, next_xL[..., None], axis=-1)[..., 0] - lse_xL
    pad = jnp.zeros(picked_xL.shape[:-1] + (1,), jnp.float32)
    out = jnp.concatenate([pad, picked_xL[..., :-1]], axis=-1)
    if mask is not None:
        out = jnp.where(mask.astype(bool), out, 0.0)
    return out


def sequence_logprobs(logits, tokens, mask):
    """Σ_t mask[t] · log p(tokens[t] | tokens[<t]): [..., L, V], [..., L], [..., L] → [...]."""
    return jnp.sum(token_logprobs(logits, tokens, mask), axis=-1)


def pack_mask(mask_xV):
    """[..., V] bool → [..., ceil(V/32)] uint32, bit j of word w = mask[..., 32·w + j]."""
    V = mask_xV.shape[-1]
    m = jnp.pad(mask_xV.astype(jnp.uint32), [(0, 0)] * (mask_xV.ndim - 1) + [(0, -V % 32)])
    m = m.reshape(m.shape[:-1] + (-1, 32))
    return jnp.sum(m << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def unpack_mask(bits_xW, vocab_size: int):
    """Inverse of `pack_mask`: [..., W] uint32 → [..., vocab_size] bool."""
    bits = (bits_xW[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    return bits.reshape(bits_xW.shape[:-1] + (-1,))[..., :vocab_size].astype(bool)


def sampled_token_logprobs(logits, tokens, mask=None, *, temperature=1.0, keep_bits=None):
    """`token_logprobs` under the distribution a sampler actually draws from: softmax of
    logits / temperature restricted to the tokens top-k/top-p kept.

    Args:
      logits: [..., L, V]; tokens, mask: [..., L] as in `token_logprobs`.
      temperature: the sampler's (0, i.e. greedy, counts as 1: its log-probs are untempered).
      keep_bits: optional [..., L, W] uint32 (`pack_mask` of the kept set), aligned with
        `tokens`: the set the token at position t was drawn from (so it restricts the logits at
        t − 1). A position with no kept bit (prompt, padding) is left unrestricted.

    The importance ratio π_θ / π_old of a sampled token is 1 at the first update exactly when
    both sides use this one distribution (no sampler/trainer mismatch).
    """
    if temperature and temperature != 1.0:
        logits = logits.astype(jnp.float32) / temperature
    if keep_bits is not None:
        keep_LxV = unpack_mask(keep_bits, logits.shape[-1])
        keep_LxV = keep_LxV | ~jnp.any(keep_LxV, axis=-1, keepdims=True)
        # the logits at t − 1 draw the token at t: shift the kept sets one position left
        keep_LxV = jnp.concatenate([keep_LxV[..., 1:, :], keep_LxV[..., :1, :]], axis=-2)
        logits = jnp.where(keep_LxV, logits, -jnp.inf)
    return token_logprobs(logits, tokens, mask)


def categorical_logprobs(logits, actions):
    """log softmax(logits)[action] for one-step (bandit) policies: [..., A], [...] → [...]."""
    chex.assert_rank(logits, actions.ndim + 1)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, actions[..., None], axis=-1)[..., 0]


def masked_mean(values, where=None, axis=None):
    """Mean of `values` over `axis` counting only entries where `where` is true (0 if none)."""
    values = jnp.asarray(values, jnp.float32)
    if where is None:
        return jnp.mean(values, axis=axis)
    where = jnp.broadcast_to(jnp.asarray(where, bool), values.shape)
    total = jnp.sum(jnp.where(where, values, 0.0), axis=axis)
    count = jnp.sum(where, axis=axis)
    return total / jnp.maximum(count, 1)
