"""Sampler: greedy == argmax of a full forward, cached == recomputed log-probs, padding sides,
EOS stops, top-k/top-p/temperature semantics, bucketing and compile reuse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeseek import decoder as dec
from modeseek import sampler

CONFIG = dec.DecoderConfig.tiny(init_std=0.3, sliding_window=6)
T = 8
forward = jax.jit(dec.forward, static_argnums=1)


@pytest.fixture(scope="module")
def params():
    return dec.init_params(jax.random.key(0), CONFIG)


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [40, 41, 42, 43, 44]]


def _recomputed(params, out):
    """Argmax and log-prob of every response token from one full forward over prompt+response.

    Logits at slot s predict the token at the next *real* slot: with right padding the first
    response token follows the last prompt token, not slot P-1."""
    logps = np.asarray(jax.nn.log_softmax(
        forward(params, CONFIG, out.tokens, attention_mask_BxL=out.mask)))
    B, T_ = out.response_tokens.shape
    P = out.tokens.shape[1] - T_
    mask = np.asarray(out.mask)
    argmax, logp = np.zeros((B, T_), int), np.zeros((B, T_))
    for b in range(B):
        real = np.flatnonzero(mask[b])
        for t in range(T_):
            prev = real[real < P + t].max()
            argmax[b, t] = logps[b, prev].argmax()
            logp[b, t] = logps[b, prev, int(out.response_tokens[b, t])]
    return argmax, logp


@pytest.mark.parametrize("side", ["left", "right"])
def test_greedy_equals_argmax_of_full_forward(params, side):
    tokens, mask = sampler.pad_prompts(PROMPTS, 0, side=side, length=8)
    out = sampler.sample(jax.random.key(1), params, CONFIG, tokens, mask, max_new_tokens=T,
                         temperature=0.0)
    assert out.tokens.shape == (3, 8 + T) and out.response_tokens.shape == (3, T)
    assert np.all(np.asarray(out.response_mask) == 1)
    argmax, logp = _recomputed(params, out)
    np.testing.assert_array_equal(out.response_tokens, argmax)
    np.testing.assert_allclose(out.response_logps, logp, atol=2e-5)
    assert len(set(np.asarray(out.response_tokens).ravel())) > 3  # not a degenerate model


def test_scanned_and_unstacked_decoding_sample_alike(params, monkeypatch):
    """Small CPU batches decode with the layers unstacked into a Python loop; the scan over
    stacked layers (larger batches, other backends) gives the same samples and log-probs."""
    tokens, mask = sampler.pad_prompts(PROMPTS, 0, side="left", length=8)
    assert sampler.unstacked_decoding(len(PROMPTS))  # CI runs on CPU
    kwargs = dict(max_new_tokens=T, temperature=1.0)
    loop = sampler.sample(jax.random.key(4), params, CONFIG, tokens, mask, **kwargs)
    monkeypatch.setattr(sampler, "UNSTACKED_DECODE_MAX_BATCH", 0)
    assert not sampler.unstacked_decoding(len(PROMPTS))
    rescan = jax.jit(sampler.sample.__wrapped__, static_argnames=sampler._STATIC)  # retrace
    scan = rescan(jax.random.key(4), params, CONFIG, tokens, mask, **kwargs)
    np.testing.assert_array_equal(loop.response_tokens, scan.response_tokens)
    np.testing.assert_allclose(loop.response_logps, scan.response_logps, atol=2e-5)


def test_left_and_right_padding_give_the_same_samples(params):
    outs = [sampler.sample(jax.random.key(2), params, CONFIG,
                           *sampler.pad_prompts(PROMPTS, 0, side=side, length=8),
                           max_new_tokens=T, temperature=1.0) for side in ("left", "right")]
    np.testing.assert_array_equal(outs[0].response_tokens, outs[1].response_tokens)
    np.testing.assert_allclose(outs[0].response_logps, outs[1].response_logps, atol=2e-5)


def test_sampled_logps_equal_recomputed_and_uncached(params):
    tokens, mask = sampler.pad_prompts(PROMPTS, 0, side="left", length=8)
    out = sampler.sample(jax.random.key(3), params, CONFIG, tokens, mask, max_new_tokens=T,
                         temperature=0.7)
    ref = sampler.sample_uncached(jax.random.key(3), params, CONFIG, tokens, mask,
                                  max_new_tokens=T, temperature=0.7)
    np.testing.assert_array_equal(out.response_tokens, ref.response_tokens)
    np.testing.assert_allclose(out.response_logps, ref.response_logps, atol=2e-5)
    logits = forward(params, CONFIG, out.tokens, attention_mask_BxL=out.mask)[:, 7:-1]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits / 0.7), out.response_tokens[..., None],
                               -1)[..., 0]
    np.testing.assert_allclose(out.response_logps, logp, atol=2e-5)
    np.testing.assert_allclose(out.response_sampling_logps, out.response_logps)


def test_eos_stops_each_row_and_masks_the_rest(params):
    tokens, mask = sampler.pad_prompts(PROMPTS, 0, side="left", length=8)
    greedy = sampler.sample(jax.random.key(4), params, CONFIG, tokens, mask, max_new_tokens=T,
                            temperature=0.0)
    eos = int(greedy.response_tokens[0, 2])  # row 0 emits it at step 2 (maybe earlier)
    never = max(set(range(1, 256)) - set(np.asarray(greedy.response_tokens).ravel().tolist()))
    out = sampler.sample(jax.random.key(4), params, CONFIG, tokens, mask, max_new_tokens=T,
                         temperature=0.0, eos_id=(eos, never), pad_id=0)
    for b in range(3):
        row = np.asarray(greedy.response_tokens[b])
        hits = np.flatnonzero(row == eos)
        n = hits[0] + 1 if hits.size else T
        np.testing.assert_array_equal(out.response_mask[b], np.arange(T) < n)
        np.testing.assert_array_equal(out.response_tokens[b, :n], row[:n])
        assert np.all(np.asarray(out.response_tokens[b, n:]) == 0)
        assert np.all(np.asarray(out.response_logps[b, n:]) == 0)
        np.testing.assert_array_equal(out.mask[b, 8:], out.response_mask[b])
    # every row stopped at once: the loop exits early and the rest stays padding
    one = sampler.sample(jax.random.key(4), params, CONFIG, tokens[:1], mask[:1],
                         max_new_tokens=T, temperature=0.0,
                         eos_id=int(greedy.response_tokens[0, 0]))
    np.testing.assert_array_equal(one.response_mask[0], np.eye(T, dtype=int)[0])


def test_top_k_and_top_p_truncate(params):
    tokens, mask = sampler.pad_prompts(PROMPTS, 0, side="left", length=8)
    greedy = sampler.sample(jax.random.key(5), params, CONFIG, tokens, mask, max_new_tokens=T,
                            temperature=0.0)
    out = sampler.sample(jax.random.key(5), params, CONFIG, tokens, mask, max_new_tokens=T,
                         temperature=1.0, top_p=1e-6)
    np.testing.assert_array_equal(out.response_tokens, greedy.response_tokens)
    np.testing.assert_allclose(out.response_sampling_logps, 0.0, atol=1e-6)
    out = sampler.sample(jax.random.key(6), params, CONFIG, tokens, mask, max_new_tokens=T,
                         temperature=1.0, top_k=3)
    logits = forward(params, CONFIG, out.tokens, attention_mask_BxL=out.mask)[:, 7:-1]
    top3 = np.asarray(jax.lax.top_k(logits, 3)[1])
    assert (np.asarray(out.response_tokens)[..., None] == top3).any(-1).all()
    assert np.all(np.asarray(out.response_sampling_logps) >= np.asarray(out.response_logps))


def _filtered_probs(logits, top_k, top_p):
    """Plain NumPy reference of top-k then top-p filtering."""
    order = np.argsort(-logits, kind="stable")
    keep = np.zeros(logits.shape, bool)
    keep[order[: top_k or logits.size]] = True
    probs = np.exp(logits - logits.max()) * keep
    probs /= probs.sum()
    before = np.cumsum(probs[order]) - probs[order]
    keep_p = np.zeros(logits.shape, bool)
    keep_p[order[before < top_p]] = True
    probs = probs * keep_p
    return probs / probs.sum()


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.8), (6, 0.7)])
def test_filtering_matches_numpy(top_k, top_p):
    logits = np.asarray(jax.random.normal(jax.random.key(9), (4, 12))) * 2
    filtered = sampler._filter_logits(jnp.asarray(logits), top_k, top_p)
    for row, f in zip(logits, np.asarray(filtered)):
        np.testing.assert_allclose(np.asarray(jax.nn.softmax(f)),
                                   _filtered_probs(row, top_k, top_p), atol=1e-6)


def test_inverse_cdf_sampler_over_blocks():
    """Two-level CDF over a 1000-token vocabulary (4 blocks, the last one padded)."""
    logits = np.full((1, 1000), -np.inf, np.float32)
    support = np.array([0, 255, 256, 600, 999])  # block edges, zero-probability neighbours
    logits[0, support] = np.log([0.1, 0.2, 0.3, 0.15, 0.25])
    n = 20000
    keys = jax.random.split(jax.random.key(3), n)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: sampler._categorical(k, logits)[0]))(keys))
    assert set(np.unique(draws)) <= set(support)
    freq = np.array([np.mean(draws == s) for s in support])
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.15, 0.25], atol=4 * np.sqrt(0.25 / n))


def test_empirical_frequencies_match_the_sampling_distribution(params):
    config = CONFIG.replace(vocab_size=8)
    small = dec.init_params(jax.random.key(7), config)
    n = 4000
    prompt = np.tile(np.array([[1, 2, 3]], np.int32), (n, 1))
    out = sampler.sample(jax.random.key(8), small, config, prompt, np.ones_like(prompt),
                         max_new_tokens=1, temperature=1.5, top_k=5)
    logits = np.asarray(forward(small, config, prompt[:1]))[0, -1] / 1.5
    expected = _filtered_probs(logits, 5, 1.0)
    freq = np.bincount(np.asarray(out.response_tokens[:, 0]), minlength=8) / n
    assert np.abs(freq - expected).max() < 4 * np.sqrt(0.25 / n)


def test_buckets_and_no_recompile_within_a_bucket(params):
    assert [sampler.bucket_length(n) for n in (1, 16, 17, 25, 33, 100, 129)] == [
        16, 16, 24, 32, 48, 128, 192]
    tokens, mask = sampler.pad_prompts([[1, 2], [3, 4, 5]], 0, side="right")
    assert tokens.shape == (2, 16)
    np.testing.assert_array_equal(mask[1, :4], [1, 1, 1, 0])
    with pytest.raises(ValueError, match="does not fit"):
        sampler.pad_prompts([[1] * 9], 0, length=8)
    sampler.sample(jax.random.key(0), params, CONFIG, tokens, mask, max_new_tokens=4)
    before = sampler.sample._cache_size()
    other, other_mask = sampler.pad_prompts([[7] * 11, [8] * 3], 0, side="left")
    sampler.sample(jax.random.key(1), params, CONFIG, other, other_mask, max_new_tokens=4)
    assert sampler.sample._cache_size() == before


def test_bfloat16_sampling_tracks_float32(params):
    tokens, mask = sampler.pad_prompts(PROMPTS, 0, side="left", length=8)
    out = sampler.sample(jax.random.key(1), params, CONFIG.replace(dtype="bfloat16"), tokens,
                         mask, max_new_tokens=T, temperature=1.0)
    assert out.response_logps.dtype == jnp.float32
    _, logp = _recomputed(params, out)  # float32 recomputation of the bf16 samples
    np.testing.assert_allclose(out.response_logps, logp, atol=0.15)
