"""Batched autoregressive sampling from `modeseek.decoder` with a pre-allocated KV cache.

API:
  sample(key, params, config, prompt_tokens_BxP, prompt_mask_BxP, *, max_new_tokens,
         temperature=1.0, top_k=0, top_p=1.0, eos_id=None, pad_id=0) -> SampleOutput
      One jitted program: prefill of the whole prompt, then one-token steps in a
      `lax.while_loop` that exits once every row has emitted EOS. Shapes are fixed by
      (B, P, max_new_tokens), so pad prompts to buckets (`pad_prompts`) to compile a handful of
      programs. temperature=0 means greedy. eos_id: int or tuple of ints.
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
  response_sampling_logps_BxT  log-prob under the truncated (top-k/top-p) distribution actually
                        sampled from; equals response_logps when no truncation is used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from modeseek import decoder as dec


class SampleOutput(NamedTuple):
    tokens: jax.Array
    mask: jax.Array
    response_tokens: jax.Array
    response_mask: jax.Array
    response_logps: jax.Array
    response_sampling_logps: jax.Array


def bucket_length(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum): prompt lengths compile to few programs."""
    size = minimum
    while size < n:
        size *= 2
    return size


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, *, side: str = "left",
                length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def _filter_logits(logits_BxV, top_k: int, top_p: float):
    if top_k:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        cutoff_Bx1 = jnp.min(jnp.where(mass_before_BxV < top_p, sorted_BxV, jnp.inf), axis=-1,
                             keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return logits_BxV


def _choose(key, logits_BxV, temperature: float, top_k: int, top_p: float):
    """Returns (token_B, logp_B under softmax(logits/T), logp_B under the truncated dist)."""
    if temperature == 0.0:
        token_B = jnp.argmax(logits_BxV, axis=-1)
        logps_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
        logp_B = jnp.take_along_axis(logps_BxV, token_B[:, None], axis=-1)[:, 0]
        return token_B.astype(jnp.int32), logp_B, logp_B
    scaled_BxV = logits_BxV / temperature
    filtered_BxV = _filter_logits(scaled_BxV, top_k, top_p)
    token_B = jax.random.categorical(key, filtered_BxV, axis=-1)
    logp_B = jnp.take_along_axis(jax.nn.log_softmax(scaled_BxV), token_B[:, None], -1)[:, 0]
    sampling_logp_B = jnp.take_along_axis(jax.nn.log_softmax(filtered_BxV), token_B[:, None],
                                          -1)[:, 0]
    return token_B.astype(jnp.int32), logp_B, sampling_logp_B


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


def _generate(key, prefill, step, prompt_mask_BxP, *, max_new_tokens, temperature, top_k, top_p,
              eos_id, pad_id):
    """Shared loop: `prefill() -> (logits_BxV, model_state)`, `step(model_state, token_B,
    live_B, pos_B, t) -> (logits_BxV, model_state)`."""
    B, T = prompt_mask_BxP.shape[0], max_new_tokens
    logits_BxV, model_state = prefill()
    pos_B = jnp.sum(prompt_mask_BxP.astype(jnp.int32), axis=1)  # position of the first response

    def record(s: _LoopState, key):
        token_B, logp_B, sampling_logp_B = _choose(key, s.logits_BxV, temperature, top_k, top_p)
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
                                  jnp.where(live_B, sampling_logp_B, zero))), token_B, live_B

    key, first_key = jax.random.split(key)
    zeros_f = jnp.zeros((B, T), jnp.float32)
    state = _LoopState(jnp.zeros((), jnp.int32), key, model_state, logits_BxV, pos_B,
                       jnp.zeros((B,), bool), jnp.full((B, T), pad_id, jnp.int32),
                       jnp.zeros((B, T), jnp.int32), zeros_f, zeros_f)
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
        response_sampling_logps=s.sampling_logps_BxT)


_STATIC = ("config", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id")


@functools.partial(jax.jit, static_argnames=_STATIC)
def sample(key: jax.Array, params, config: dec.DecoderConfig, prompt_tokens_BxP: jax.Array,
           prompt_mask_BxP: jax.Array, *, max_new_tokens: int, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, eos_id: int | tuple[int, ...] | None = None,
           pad_id: int = 0) -> SampleOutput:
    B, P = prompt_tokens_BxP.shape
    prompt_mask_BxP = prompt_mask_BxP.astype(bool)
    last_B = dec.last_token_index(prompt_mask_BxP)

    def prefill():
        cache = dec.init_cache(config, B, P + max_new_tokens)
        hidden_BxPxD, cache = dec.forward_cached(
            params, config, prompt_tokens_BxP, cache, token_mask_BxL=prompt_mask_BxP,
            positions_BxL=dec.positions_from_mask(prompt_mask_BxP))
        # logits only where they are needed: each row's last prompt token
        hidden_BxD = jnp.take_along_axis(hidden_BxPxD, last_B[:, None, None], axis=1)[:, 0]
        return dec.unembed(params, config, hidden_BxD), cache

    def step(cache, token_B, live_B, pos_B, t):
        del t
        hidden_Bx1xD, cache = dec.forward_cached(
            params, config, token_B[:, None], cache, token_mask_BxL=live_B[:, None],
            positions_BxL=pos_B[:, None])
        return dec.unembed(params, config, hidden_Bx1xD[:, 0]), cache

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
