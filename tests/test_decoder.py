"""Decoder: shapes, axes metadata, masking/padding invariances, GQA, KV cache, scalar heads.

Parity with an independent implementation (transformers) lives in test_parity.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeseek import decoder as dec

VARIANTS = {
    "llama": dict(),
    "neox": dict(norm="layer", rotary_fraction=0.5, mlp="gelu", parallel_residual=True,
                 qkv_bias=True, attn_out_bias=True, mlp_bias=True, tied_embeddings=False),
    "qwen2": dict(qkv_bias=True, rope_theta=1e6, tied_embeddings=False),
    "mistral": dict(sliding_window=4, num_kv_heads=1),
}


forward = jax.jit(dec.forward, static_argnums=1, static_argnames="return_hidden")
forward_cached = jax.jit(dec.forward_cached, static_argnums=1)


def _config(name="llama", **kw):
    return dec.DecoderConfig.tiny(init_std=0.3, **{**VARIANTS[name], **kw})


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(7), (3, 10), 1, 256)


def test_tiny_size_and_axes_match_params():
    config = dec.DecoderConfig.tiny()
    assert 30_000 <= dec.num_params(config) <= 100_000
    params = dec.init_params(jax.random.key(0), config)
    axes = dec.param_axes(config)
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_a = jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))
    assert [p for p, _ in flat_p] == [p for p, _ in flat_a]
    for (path, x), (_, names) in zip(flat_p, flat_a):
        assert len(names) == x.ndim, path
        assert set(names) <= {"layers", "vocab", "embed", "heads", "kv_heads", "kv", "mlp"}
    assert axes["layers"]["attn"]["q_kernel"] == ("layers", "embed", "heads", "kv")
    assert params["layers"]["attn"]["q_kernel"].shape == (2, 48, 4, 12)
    assert axes["embedding"] == ("vocab", "embed")
    cache = dec.init_cache(config, 2, 8)
    cache_axes = dec.cache_axes(config)
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(n, str) for n in x)
    assert jax.tree.structure(cache_axes, is_leaf=is_axes) == jax.tree.structure(cache)
    for x, names in zip(jax.tree.leaves(cache), jax.tree.leaves(cache_axes, is_leaf=is_axes)):
        assert len(names) == x.ndim


def test_7b_preset_counts_without_allocating():
    assert 6.6e9 < dec.num_params(dec.DecoderConfig.llama2_7b()) < 6.8e9
    assert 1.3e8 < dec.num_params(dec.DecoderConfig.smollm2_135m()) < 1.4e8


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="num_kv_heads"):
        dec.DecoderConfig.tiny(num_kv_heads=3)
    with pytest.raises(ValueError, match="norm"):
        dec.DecoderConfig.tiny(norm="batch")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_shapes_and_causality(name, tokens):
    config = _config(name)
    params = dec.init_params(jax.random.key(1), config)
    logits = forward(params, config, tokens)
    assert logits.shape == (3, 10, 256) and logits.dtype == jnp.float32
    changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % 256)
    logits2 = forward(params, config, changed)
    np.testing.assert_allclose(logits[:, :6], logits2[:, :6], atol=2e-5)
    assert np.abs(logits[:, 6:] - logits2[:, 6:]).max() > 1e-3


def test_bf16_compute_gives_float32_logits(tokens):
    config = _config(dtype="bfloat16")
    params = dec.init_params(jax.random.key(1), config)
    logits, hidden = forward(params, config, tokens, return_hidden=True)
    assert logits.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
    ref = forward(params, config.replace(dtype="float32"), tokens)
    assert np.abs(logits - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("name", ["llama", "neox", "mistral"])
def test_padding_anywhere_does_not_change_valid_logits(name, tokens):
    config = _config(name)
    params = dec.init_params(jax.random.key(2), config)
    ref = forward(params, config, tokens[:1, :7])[0]
    row = np.asarray(tokens[0, :7])
    layouts = {  # where the 7 real tokens sit in a length-10 row
        "left": np.r_[3:10], "right": np.r_[0:7], "middle": np.r_[0:3, 6:10]}
    for where in layouts.values():
        padded = np.zeros((1, 10), np.int32)
        mask = np.zeros((1, 10), np.int32)
        padded[0, where], mask[0, where] = row, 1
        logits = forward(params, config, padded, attention_mask_BxL=mask)[0]
        np.testing.assert_allclose(logits[where], ref, atol=2e-5)


def test_sliding_window_limits_receptive_field(tokens):
    config = _config("mistral", num_layers=1)  # one layer: receptive field = window
    params = dec.init_params(jax.random.key(3), config)
    changed = tokens.at[:, 0].set((tokens[:, 0] + 1) % 256)
    diff = np.abs(forward(params, config, tokens) - forward(params, config, changed))
    assert diff[:, 3].max() > 1e-4  # window 4: position 3 still sees position 0
    assert diff[:, 4:].max() == 0.0


def test_grouped_query_equals_multihead_with_repeated_kv(tokens):
    config = _config(num_heads=4, num_kv_heads=2)
    params = dec.init_params(jax.random.key(4), config)
    mha = config.replace(num_kv_heads=4)
    params_mha = jax.tree.map(lambda x: x, params)
    attn = params_mha["layers"]["attn"]  # [layers, embed, kv_heads, head_dim]
    for name in ("k_kernel", "v_kernel"):  # q head h reads kv head h // 2
        attn[name] = jnp.repeat(attn[name], 2, axis=2)
    np.testing.assert_allclose(forward(params, config, tokens),
                               forward(params_mha, mha, tokens), atol=1e-5)


@pytest.mark.parametrize("unstacked", [False, True], ids=["scan", "unstacked"])
@pytest.mark.parametrize("name,fused_variant", [("llama", {}), ("mistral", {}),
                                                ("qwen2", dict(mlp_bias=True))])
def test_cached_logits_equal_recomputed(name, fused_variant, unstacked, tokens):
    """Prefill + one-token steps through the cache, with the decode-fused weights (scanned, or
    unstacked into a Python loop over layers as the sampler runs them), against one full
    forward with the plain weights."""
    config = _config(name, **fused_variant)
    params = dec.init_params(jax.random.key(5), config)
    fused = dec.fuse_for_decoding(params, config)
    assert "qkv_kernel" in fused["layers"]["attn"] and "q_kernel" not in fused["layers"]["attn"]
    if unstacked:
        fused = dec.unstack_layers(fused)
        assert len(fused["layers"]) == config.num_layers
        np.testing.assert_array_equal(fused["layers"][1]["attn"]["qkv_kernel"],
                                      dec.fuse_for_decoding(params, config)["layers"]["attn"]
                                      ["qkv_kernel"][1])
    mask = np.ones((3, 10), np.int32)
    mask[0, :2] = 0  # left-padded row
    mask[1, 8:] = 0  # right-padded row
    full = forward(params, config, tokens, attention_mask_BxL=mask)
    positions = dec.positions_from_mask(mask)
    cache = dec.init_cache(config, 3, 12)
    chunks = []
    for lo, hi in [(0, 5), (5, 6), (6, 7), (7, 10)]:  # a prefill, single steps, another chunk
        hidden, cache = forward_cached(fused, config, tokens[:, lo:hi], cache,
                                           token_mask_BxL=mask[:, lo:hi],
                                           positions_BxL=positions[:, lo:hi])
        chunks.append(dec.unembed(params, config, hidden))
    cached = jnp.concatenate(chunks, axis=1)
    valid = mask.astype(bool)
    np.testing.assert_allclose(cached[valid], full[valid], atol=2e-5)
    assert int(cache["index"]) == 10


def test_gradients_are_finite(tokens):
    config = _config("neox")
    params = dec.init_params(jax.random.key(6), config)

    def loss(p):
        logps = jax.nn.log_softmax(dec.forward(p, config, tokens))
        return -jnp.mean(jnp.take_along_axis(logps[:, :-1], tokens[:, 1:, None], -1))

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert all(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_scalar_head_scores_last_real_token(tokens):
    config = _config()
    params = dec.init_scalar_model(jax.random.key(8), config)
    assert set(dec.scalar_head_axes(config)) == set(params["head"])
    row = tokens[0, :6]
    right = np.zeros((2, 9), np.int32)
    right_mask = np.zeros((2, 9), np.int32)
    right[0, :6], right_mask[0, :6] = row, 1
    right[1, 3:], right_mask[1, 3:] = row, 1  # left-padded copy
    scores = jax.jit(dec.score, static_argnums=1)(params, config, right, right_mask)
    values = jax.jit(dec.token_values, static_argnums=1)(params, config, right, right_mask)
    assert scores.shape == (2,) and values.shape == (2, 9)
    np.testing.assert_allclose(scores[0], values[0, 5], atol=1e-6)
    np.testing.assert_allclose(scores[0], scores[1], atol=2e-5)
    np.testing.assert_array_equal(dec.last_token_index(right_mask), [5, 8])


def _numpy_attention(q, k, v, mask):
    """Brute force: per batch row b, query head h (kv head h // R), query t."""
    B, L, H, K = q.shape
    G = k.shape[2]
    out = np.zeros(q.shape, np.float64)
    for b, t, h in np.ndindex(B, L, H):
        s = k[b, :, h // (H // G)] @ q[b, t, h] / np.sqrt(K)
        if mask[b, t].any():
            s = np.where(mask[b, t], s, -np.inf)
        else:
            s = np.zeros_like(s)  # a fully masked (pad) query: uniform over every slot
        p = np.exp(s - s.max())
        out[b, t, h] = (p / p.sum()) @ v[b, :, h // (H // G)]
    return out


def test_attention_paths_equal_brute_force():
    """Both attention paths against a NumPy loop, under a random mask with a fully masked row,
    GQA (6 query heads on 2 kv heads) and keys longer than queries (the cached case)."""
    from modeseek.decoder_layers import _einsum_attention, _fused_attention

    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 3, 6, 8)).astype(np.float32)
    k, v = (rng.normal(size=(2, 5, 2, 8)).astype(np.float32) for _ in range(2))
    mask = rng.random((2, 3, 5)) < 0.6
    mask[0, 1] = False
    ref = _numpy_attention(q, k, v, mask)
    config = dec.DecoderConfig.tiny(num_heads=6, num_kv_heads=2, head_dim=8)
    np.testing.assert_allclose(_einsum_attention(q, k, v, mask), ref, atol=1e-5)
    np.testing.assert_allclose(_fused_attention(q, k, v, mask, config, False), ref, atol=1e-5)
    causal = np.tril(np.ones((5, 5), bool)) & (rng.random((2, 1, 5)) < 0.7)
    q5 = rng.normal(size=(2, 5, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(_fused_attention(q5, k, v, causal, config, True),
                               _numpy_attention(q5, k, v, causal), atol=1e-5)


@pytest.mark.parametrize("name", ["neox", "mistral"])
def test_dot_product_and_einsum_models_agree(name, tokens):
    config = _config(name)
    params = dec.init_params(jax.random.key(9), config)
    mask = np.ones((3, 10), np.int32)
    mask[0, :4] = 0
    fused = forward(params, config, tokens, attention_mask_BxL=mask)
    plain = forward(params, config.replace(attention="einsum"), tokens, attention_mask_BxL=mask)
    np.testing.assert_allclose(fused, plain, atol=2e-5)


def _nll(config, tokens):
    def loss(p):
        logps = jax.nn.log_softmax(dec.forward(p, config, tokens))
        return -jnp.mean(jnp.take_along_axis(logps[:, :-1], tokens[:, 1:, None], -1))
    return loss


def test_remat_policies_give_identical_gradients(tokens):
    config = _config("llama", num_layers=3)
    params = dec.init_params(jax.random.key(10), config)
    grads = {}
    for remat in ("none", "dots_saveable", "full"):
        loss = _nll(config.replace(remat=remat), tokens)
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == (remat != "none"), remat
        grads[remat] = jax.jit(jax.grad(loss))(params)
    for remat in ("dots_saveable", "full"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                     grads[remat], grads["none"])
    with pytest.raises(ValueError, match="remat"):
        config.replace(remat="some")


def test_trace_size_does_not_grow_with_depth(tokens):
    """One scanned block: the traced program of 2 and 12 layers has the same operations."""
    def ops(depth):
        config = _config(num_layers=depth)
        params = jax.eval_shape(dec.init_params, jax.random.key(0), config)
        jaxpr = jax.make_jaxpr(jax.grad(_nll(config, tokens)))(params)
        return str(jaxpr).count("dot_general")

    assert ops(2) == ops(12) > 0


def test_truncate_layers_equals_model_with_identity_top_layers(tokens):
    """A pre-norm layer whose output projections are zero is the identity, so a 3-layer model
    with layer 2 zeroed equals its 2-layer truncation (embedding and final norm kept)."""
    config = _config(num_layers=3)
    params = dec.init_params(jax.random.key(11), config)
    zeroed = jax.tree.map(lambda x: x, params)
    for group, name in (("attn", "o_kernel"), ("mlp", "down_kernel")):
        zeroed["layers"][group][name] = params["layers"][group][name].at[2].set(0.0)
    trunk = dec.truncate_layers(params, 2)
    assert trunk["layers"]["attn"]["q_kernel"].shape[0] == 2
    np.testing.assert_allclose(forward(trunk, config.replace(num_layers=2), tokens),
                               forward(zeroed, config, tokens), atol=1e-5)
    fused = dec.truncate_layers(dec.fuse_for_decoding(params, config), 1)
    assert fused["layers"]["attn"]["qkv_kernel"].shape[0] == 1
    for bad in (0, 4):
        with pytest.raises(ValueError, match="num_layers"):
            dec.truncate_layers(params, bad)
