"""Batched autoregressive sampling from `modeseek.decoder` with a pre-allocated KV cache.

API:
  sample(key, params, config, prompt_tokens_BxP, prompt_mask_BxP, *, max_new_tokens,
         temperature=1.0, top_k=0, top_p=1.0, eos_id=None, pad_id=0) -> SampleOutput
      One jitted program: prefill of the whole prompt, then one-token steps in a
      `lax.while_loop` that exits once every row has emitted EOS. Shapes are fixed by
      (B, P, max_new_tokens), so pad prompts to buckets (`pad_prompts`) to compile a handful of
      programs. temperature=0 means greedy. eos_id: int or tuple of ints. Weights are cast to
      config.dtype and q|k|v, gate|up fused once per call (bfloat16 sampling: pass
      config.replace(dtype="bfloat16"); log-probs stay float32).
  sample_uncached(...)  same signature and output; recomputes the full forward every step
      (the reference the cache is tested and benchmarked against).
  bucket_length(n, minimum=16) -> int           next power of two >= n
  pad_prompts(prompts, pad_id, *, side="left", length=None) -> (tokens_BxP, mask_BxP) numpy

SampleOutput fields:
  tokens_BxS            prompt (as given, pads kept) followed by the response, S = P + T
  mask_BxS              prompt_mask followed by response_mask
  response_tokens_BxT   pad_id after EOS / for finished rows
  response_mask_BxT     1 for generated tokens up to and including EOS
  response_logps_BxT    log π(token) with π = softmax(logits / temperature) (temperature 1 when
                        greedy), before top-k/top-p truncation: the value a learner recomputes
                        from the same model, i.e. PPO's "old" log-prob. 0 where masked.
  response_sampling_logps_BxT  log-prob under the tempered, truncated (top-k/top-p)
                        distribution actually sampled from (the behaviour policy of importance
                        ratios); equals response_logps when no truncation is used.
  response_keep_bits_BxTxW  the sampling mask: which tokens top-k/top-p kept at each step,
                        packed 32 per uint32 word (`modeseek.logprobs.pack_mask`; 0 where
                        masked); None when sampling does not truncate. With it,
                        `modeseek.sampled_token_logprobs` recomputes exactly the sampled
                        distribution at training time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from modeseek import decoder as dec
from modeseek._checks import check_sampling_args
from modeseek.logprobs import pack_mask


class SampleOutput(NamedTuple):
    tokens: jax.Array
    mask: jax.Array
    response_tokens: jax.Array
    response_mask: jax.Array
    response_logps: jax.Array
    response_sampling_logps: jax.Array
    response_keep_bits: jax.Array | None = None


def bucket_length(n: int, minimum: int = 16) -> int:
    """Smallest bucket >= max(n, minimum) on the ladder 16, 24, 32, 48, 64, 96, ... (powers of
    two and 1.5x powers of two): few compiled programs, at most a third of a bucket padding."""
    size = minimum
    while True:
        if size >= n:
            return size
        if size * 3 // 2 >= n and (size * 3) % 2 == 0:
            return size * 3 // 2
        size *= 2


def response_bucket(samples: SampleOutput, *, minimum: int = 16) -> int:
    """The smallest power of two ≥ `minimum` (at most the sampled width T) that holds every
    sampled response: one scalar read back to the host. With `trim_responses`, later passes
    (scoring, update) run on [B, P + bucket] instead of [B, P + T], at most log2(T / minimum)
    + 1 compiled shapes."""
    T = samples.response_tokens.shape[1]
    longest = int(jnp.max(jnp.sum(samples.response_mask, axis=1)))
    size = minimum
    while size < longest:
        size *= 2
    return min(size, T)


def trim_responses(samples: SampleOutput, length: int) -> SampleOutput:
    """`samples` with the response axis cut to its first `length` positions. Only padding is
    removed when `length` ≥ every response's length (`response_bucket`); masks, log-probs and
    keep bits are cut alike, so every masked sum is unchanged."""
    T = samples.response_tokens.shape[1]
    if not 1 <= length <= T:
        raise ValueError(f"trim_responses: length must be in 1..{T}, got {length}")
    keep = samples.tokens.shape[1] - T + length
    cut = lambda x: None if x is None else x[:, :length]
    return SampleOutput(
        tokens=samples.tokens[:, :keep], mask=samples.mask[:, :keep],
        response_tokens=cut(samples.response_tokens), response_mask=cut(samples.response_mask),
        response_logps=cut(samples.response_logps),
        response_sampling_logps=cut(samples.response_sampling_logps),
        response_keep_bits=cut(samples.response_keep_bits))


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, *, side: str = "left",
                length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, length], mask [B, length]) as numpy int32, each prompt padded on `side` to
    `length` (default: its `bucket_length`)."""
    if side not in ("left", "right"):
        raise ValueError(f"pad side must be 'left' or 'right', got {side!r}")
    longest = max(len(p) for p in prompts)
    length = bucket_length(longest) if length is None else length
    if longest > length:
        raise ValueError(f"prompt of {longest} tokens does not fit length {length}")
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        sl = slice(length - len(p), length) if side == "left" else slice(0, len(p))
        tokens[i, sl] = p
        mask[i, sl] = 1
    return tokens, mask


def _ordered_bits(x_BxV):
    """float32 -> uint32 with the same order (so thresholds can be bisected bit by bit)."""
    b = jax.lax.bitcast_convert_type(x_BxV.astype(jnp.float32), jnp.int32)
    b = jnp.where(b < 0, b ^ 0x7FFFFFFF, b)
    return jax.lax.bitcast_convert_type(b, jnp.uint32) ^ jnp.uint32(0x80000000)


def _largest_threshold(keys_BxV, weights_BxV, target_Bx1):
    """Largest key t with sum(weights[keys >= t]) >= target, by bisection on the 32 key bits.

    Exact (no sort): top-k and top-p over a 50k vocabulary cost 32 masked sums instead of a
    sort per row, which is ~10x faster on CPU."""
    shape = target_Bx1.shape

    def body(_, lo_hi):
        lo, hi = lo_hi
        mid = lo + (hi - lo) // 2 + (lo < hi).astype(jnp.uint32)
        ok = jnp.sum(jnp.where(keys_BxV >= mid, weights_BxV, 0), -1, keepdims=True) >= target_Bx1
        ok &= lo < hi
        return jnp.where(ok, mid, lo), jnp.where(ok | (lo >= hi), hi, mid - 1)

    lo = jnp.zeros(shape, jnp.uint32)
    hi = jnp.full(shape, 0xFFFFFFFF, jnp.uint32)
    return jax.lax.fori_loop(0, 32, body, (lo, hi))[0]


def _filter_logits(logits_BxV, top_k: int, top_p: float):
    """Top-k, then top-p (the smallest set of most likely tokens whose mass reaches top_p).
    Ties at the threshold are all kept."""
    if 0 < top_k < logits_BxV.shape[-1]:
        keys_BxV = _ordered_bits(logits_BxV)
        kth_Bx1 = _largest_threshold(keys_BxV, jnp.ones((), jnp.int32),
                                     jnp.full(logits_BxV.shape[:1] + (1,), top_k))
        logits_BxV = jnp.where(keys_BxV >= kth_Bx1, logits_BxV, -jnp.inf)
    if top_p < 1.0:
        probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
        keys_BxV = _ordered_bits(logits_BxV)
        target_Bx1 = jnp.minimum(top_p, jnp.sum(probs_BxV, -1, keepdims=True))
        cut_Bx1 = _largest_threshold(keys_BxV, probs_BxV, target_Bx1)
        logits_BxV = jnp.where(keys_BxV >= cut_Bx1, logits_BxV, -jnp.inf)
    return logits_BxV


def _argmax(x_BxV):
    """First index of the row maximum (two plain reductions; faster than XLA:CPU's argmax)."""
    iota = jnp.arange(x_BxV.shape[-1], dtype=jnp.int32)
    top = jnp.max(x_BxV, -1, keepdims=True)
    return jnp.min(jnp.where(x_BxV == top, iota, x_BxV.shape[-1]), -1)


def _categorical(key, logits_BxV, block: int = 256):
    """Inverse-CDF sampling with one uniform per row, through a two-level CDF (blocks of
    `block` tokens): a fraction of the cost of Gumbel-max's one random number per token."""
    B, V = logits_BxV.shape
    pad = -V % block
    probs_BxV = jnp.pad(jax.nn.softmax(logits_BxV, axis=-1), ((0, 0), (0, pad)))
    probs_BxNxK = probs_BxV.reshape(B, -1, block)
    mass_BxN = probs_BxNxK.sum(-1)
    cdf_BxN = jnp.cumsum(mass_BxN, -1)
    u_Bx1 = (1.0 - jax.random.uniform(key, (B, 1))) * cdf_BxN[:, -1:]  # in (0, total]
    i_B = jnp.minimum(jnp.sum(cdf_BxN < u_Bx1, -1), cdf_BxN.shape[1] - 1)
    block_BxK = jnp.take_along_axis(probs_BxNxK, i_B[:, None, None], 1)[:, 0]
    below_B = (jnp.take_along_axis(cdf_BxN, i_B[:, None], 1)
               - jnp.take_along_axis(mass_BxN, i_B[:, None], 1))[:, 0]
    inner_BxK = jnp.cumsum(block_BxK, -1) + below_B[:, None]
    j_B = jnp.sum(inner_BxK < u_Bx1, -1)
    # rounding must never land on a zero-probability token (filtered out or padding)
    iota = jnp.arange(block)
    nonzero_BxK = block_BxK > 0
    first_B = jnp.min(jnp.where(nonzero_BxK, iota, block), -1)
    last_B = jnp.max(jnp.where(nonzero_BxK, iota, 0), -1)
    return (i_B * block + jnp.clip(j_B, first_B, last_B)).astype(jnp.int32)


def _logp_of(logits_BxV, token_B):
    lse_B = jax.nn.logsumexp(logits_BxV, axis=-1)
    return jnp.take_along_axis(logits_BxV, token_B[:, None], -1)[:, 0] - lse_B


def truncates(vocab_size: int, temperature: float, top_k: int, top_p: float) -> bool:
    """Whether sampling restricts the support (so the rollout must keep the sampling mask)."""
    return temperature != 0.0 and (0 < top_k < vocab_size or top_p < 1.0)


def _choose(key, logits_BxV, temperature: float, top_k: int, top_p: float):
    """Returns (token_B, logp_B under softmax(logits/T), logp_B under the truncated dist,
    packed kept set [B, W] or None when nothing is truncated)."""
    if temperature == 0.0:
        token_B = _argmax(logits_BxV)
        logp_B = _logp_of(logits_BxV, token_B)
        return token_B, logp_B, logp_B, None
    scaled_BxV = logits_BxV / temperature
    filtered_BxV = _filter_logits(scaled_BxV, top_k, top_p)
    token_B = _categorical(key, filtered_BxV)
    logp_B = _logp_of(scaled_BxV, token_B)
    if filtered_BxV is scaled_BxV:
        return token_B, logp_B, logp_B, None
    keep_BxW = pack_mask(filtered_BxV > -jnp.inf)
    return token_B, logp_B, _logp_of(filtered_BxV, token_B), keep_BxW


def _is_eos(token_B, eos_id):
    if eos_id is None:
        return jnp.zeros(token_B.shape, bool)
    ids = (eos_id,) if isinstance(eos_id, int) else tuple(eos_id)
    return jnp.isin(token_B, jnp.asarray(ids, jnp.int32))


class _LoopState(NamedTuple):
    t: jax.Array
    key: jax.Array
    model_state: object  # KV cache, or the full token buffer for the uncached loop
    logits_BxV: jax.Array
    pos_B: jax.Array
    done_B: jax.Array
    tokens_BxT: jax.Array
    mask_BxT: jax.Array
    logps_BxT: jax.Array
    sampling_logps_BxT: jax.Array
    keep_BxTxW: jax.Array | None


def _generate(key, prefill, step, prompt_mask_BxP, *, max_new_tokens, temperature, top_k, top_p,
              eos_id, pad_id):
    """Shared loop: `prefill() -> (logits_BxV, model_state)`, `step(model_state, token_B,
    live_B, pos_B, t) -> (logits_BxV, model_state)`."""
    B, T = prompt_mask_BxP.shape[0], max_new_tokens
    logits_BxV, model_state = prefill()
    pos_B = jnp.sum(prompt_mask_BxP.astype(jnp.int32), axis=1)  # position of the first response

    def record(s: _LoopState, key):
        token_B, logp_B, sampling_logp_B, keep_BxW = _choose(key, s.logits_BxV, temperature,
                                                             top_k, top_p)
        live_B = ~s.done_B
        token_B = jnp.where(live_B, token_B, pad_id)
        at = lambda buf, val: jax.lax.dynamic_update_index_in_dim(buf, val, s.t, axis=1)
        zero = jnp.zeros_like(logp_B)
        return s._replace(
            done_B=s.done_B | _is_eos(token_B, eos_id),
            tokens_BxT=at(s.tokens_BxT, token_B),
            mask_BxT=at(s.mask_BxT, live_B.astype(jnp.int32)),
            logps_BxT=at(s.logps_BxT, jnp.where(live_B, logp_B, zero)),
            sampling_logps_BxT=at(s.sampling_logps_BxT,
                                  jnp.where(live_B, sampling_logp_B, zero)),
            keep_BxTxW=None if keep_BxW is None else at(
                s.keep_BxTxW, jnp.where(live_B[:, None], keep_BxW, jnp.uint32(0)))
        ), token_B, live_B

    key, first_key = jax.random.split(key)
    zeros_f = jnp.zeros((B, T), jnp.float32)
    V = logits_BxV.shape[-1]
    keep = (jnp.zeros((B, T, -(-V // 32)), jnp.uint32)
            if truncates(V, temperature, top_k, top_p) else None)
    state = _LoopState(jnp.zeros((), jnp.int32), key, model_state, logits_BxV, pos_B,
                       jnp.zeros((B,), bool), jnp.full((B, T), pad_id, jnp.int32),
                       jnp.zeros((B, T), jnp.int32), zeros_f, zeros_f, keep)
    state, _, _ = record(state, first_key)

    def body(s: _LoopState):
        # the token sampled at step t-1 is fed to produce the logits for step t
        prev_B = s.tokens_BxT[:, s.t]
        live_B = s.mask_BxT[:, s.t].astype(bool)
        logits_BxV, model_state = step(s.model_state, prev_B, live_B, s.pos_B, s.t)
        key, sub = jax.random.split(s.key)
        s = s._replace(t=s.t + 1, key=key, model_state=model_state, logits_BxV=logits_BxV,
                       pos_B=s.pos_B + live_B.astype(jnp.int32))
        return record(s, sub)[0]

    cond = lambda s: (s.t + 1 < T) & ~jnp.all(s.done_B)
    return jax.lax.while_loop(cond, body, state)


def _output(prompt_tokens_BxP, prompt_mask_BxP, s: _LoopState) -> SampleOutput:
    return SampleOutput(
        tokens=jnp.concatenate([prompt_tokens_BxP.astype(jnp.int32), s.tokens_BxT], axis=1),
        mask=jnp.concatenate([prompt_mask_BxP.astype(jnp.int32), s.mask_BxT], axis=1),
        response_tokens=s.tokens_BxT, response_mask=s.mask_BxT, response_logps=s.logps_BxT,
        response_sampling_logps=s.sampling_logps_BxT, response_keep_bits=s.keep_BxTxW)


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)


def _output_head(params, config: dec.DecoderConfig):
    """The unembedding as a [D, V] matrix, materialised once per call: a tied [V, D] table is
    transposed so every decode step streams it row-major (faster on CPU)."""
    if config.tied_embeddings:
        head_DxV = jax.lax.optimization_barrier(params["embedding"].T)
    else:
        head_DxV = params["lm_head"]
    return head_DxV.astype(config.compute_dtype)


# Largest batch whose decode steps run the layers as a Python loop (`dec.unstack_layers`) on
# CPU: inside the scan XLA:CPU copies every layer's weights out of the stacked arrays on each
# token. benchmarks/decode.py, SmolLM2-135M fp32, tok/s scan → loop: batch 1 20 → 27, 4 53 →
# 63, 8 78 → 97, 16 122–145 → 124–141 (no gain); compile 6–12 s → 15–26 s. Elsewhere (not
# measured) and for larger batches the scan stays.
UNSTACKED_DECODE_MAX_BATCH = 8


def unstacked_decoding(batch: int) -> bool:
    return jax.default_backend() == "cpu" and batch <= UNSTACKED_DECODE_MAX_BATCH


_STATIC = ("config", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id")


@functools.partial(jax.jit, static_argnames=_STATIC)
def sample(key: jax.Array, params, config: dec.DecoderConfig, prompt_tokens_BxP: jax.Array,
           prompt_mask_BxP: jax.Array, *, max_new_tokens: int, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, eos_id: int | tuple[int, ...] | None = None,
           pad_id: int = 0) -> SampleOutput:
    check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p,
                        max_new_tokens=max_new_tokens, max_len=config.max_len)
    chex.assert_rank(prompt_tokens_BxP, 2)
    chex.assert_equal_shape([prompt_tokens_BxP, prompt_mask_BxP])
    B, P = prompt_tokens_BxP.shape
    prompt_mask_BxP = prompt_mask_BxP.astype(bool)
    last_B = dec.last_token_index(prompt_mask_BxP)
    head_DxV = _output_head(params, config)
    # once per call, outside the loop: compute-dtype weights (a no-op in float32) and fused
    # q|k|v, gate|up matmuls, so no step re-reads or re-casts a weight twice
    params = dec.fuse_for_decoding(_cast_floats(params, config.compute_dtype), config)
    if unstacked_decoding(B):
        params = dec.unstack_layers(params)

    def unembed(hidden_BxD):
        return jnp.dot(hidden_BxD.astype(head_DxV.dtype), head_DxV,
                       preferred_element_type=jnp.float32)

    def prefill():
        cache = dec.init_cache(config, B, P + max_new_tokens)
        hidden_BxPxD, cache = dec.forward_cached(
            params, config, prompt_tokens_BxP, cache, token_mask_BxL=prompt_mask_BxP,
            positions_BxL=dec.positions_from_mask(prompt_mask_BxP))
        # logits only where they are needed: each row's last prompt token
        hidden_BxD = jnp.take_along_axis(hidden_BxPxD, last_B[:, None, None], axis=1)[:, 0]
        return unembed(hidden_BxD), cache

    def step(cache, token_B, live_B, pos_B, t):
        del t
        hidden_Bx1xD, cache = dec.forward_cached(
            params, config, token_B[:, None], cache, token_mask_BxL=live_B[:, None],
            positions_BxL=pos_B[:, None])
        return unembed(hidden_Bx1xD[:, 0]), cache

    state = _generate(key, prefill, step, prompt_mask_BxP, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                      pad_id=pad_id)
    return _output(prompt_tokens_BxP, prompt_mask_BxP, state)


@functools.partial(jax.jit, static_argnames=_STATIC)
def sample_uncached(key: jax.Array, params, config: dec.DecoderConfig,
                    prompt_tokens_BxP: jax.Array, prompt_mask_BxP: jax.Array, *,
                    max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, eos_id: int | tuple[int, ...] | None = None,
                    pad_id: int = 0) -> SampleOutput:
    B, P = prompt_tokens_BxP.shape
    prompt_mask_BxP = prompt_mask_BxP.astype(bool)
    last_B = dec.last_token_index(prompt_mask_BxP)

    def logits_at(buffers, index_B):
        tokens_BxS, mask_BxS = buffers
        logits_BxSxV = dec.forward(params, config, tokens_BxS, attention_mask_BxL=mask_BxS)
        return jnp.take_along_axis(logits_BxSxV, index_B[:, None, None], axis=1)[:, 0]

    def prefill():
        buffers = (jnp.concatenate([prompt_tokens_BxP.astype(jnp.int32),
                                    jnp.full((B, max_new_tokens), pad_id, jnp.int32)], 1),
                   jnp.concatenate([prompt_mask_BxP, jnp.zeros((B, max_new_tokens), bool)], 1))
        return logits_at(buffers, last_B), buffers

    def step(buffers, token_B, live_B, pos_B, t):
        del pos_B
        tokens_BxS, mask_BxS = buffers
        tokens_BxS = jax.lax.dynamic_update_index_in_dim(tokens_BxS, token_B, P + t, axis=1)
        mask_BxS = jax.lax.dynamic_update_index_in_dim(mask_BxS, live_B, P + t, axis=1)
        buffers = (tokens_BxS, mask_BxS)
        return logits_at(buffers, jnp.full((B,), P + t)), buffers

    state = _generate(key, prefill, step, prompt_mask_BxP, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                      pad_id=pad_id)
    return _output(prompt_tokens_BxP, prompt_mask_BxP, state)


sample.__doc__ = """Sample up to `max_new_tokens` response tokens per row with a KV cache (one
jitted program); see the module docstring for the arguments and the returned `SampleOutput`."""
