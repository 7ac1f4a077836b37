"""Flax linen layers of `modeseek.decoder` (norms, rotary embeddings, grouped-query attention
with an optional KV cache, SwiGLU/GELU MLPs, pre-norm blocks). Use them through the functional
API in `modeseek.decoder`; every parameter carries logical axis names."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from modeseek.decoder import DecoderConfig

_NEG_INF = -1e30  # finite: a fully masked (pad) row gives a uniform softmax, not NaN


def _param(mod: nn.Module, name: str, shape, axes, init=None):
    cfg = mod.config
    init = init or nn.initializers.normal(cfg.init_std)
    return mod.param(name, nn.with_logical_partitioning(init, axes), shape,
                     jnp.dtype(cfg.param_dtype))


class _Norm(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        scale = _param(self, "scale", (cfg.embed_dim,), ("embed",), nn.initializers.ones)
        # statistics in float32 whatever the compute dtype
        x32 = x.astype(jnp.float32)
        if cfg.norm == "rms":
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + cfg.norm_eps)
            return (y * scale.astype(jnp.float32)).astype(cfg.compute_dtype)
        bias = _param(self, "bias", (cfg.embed_dim,), ("embed",), nn.initializers.zeros)
        mean = jnp.mean(x32, -1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(cfg.compute_dtype)


def _rope(x_BxLxHxK, positions_BxL, config: DecoderConfig):
    """Rotate-half RoPE (HF Llama / GPT-NeoX layout) on the first `rotary_dim` channels."""
    rot = config.rotary_dim
    if rot == 0:
        return x_BxLxHxK
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, rot, 2, dtype=jnp.float32) / rot))
    angles_BxLxR = positions_BxL.astype(jnp.float32)[..., None] * inv_freq
    angles_BxLxR = jnp.concatenate([angles_BxLxR, angles_BxLxR], -1)[:, :, None, :]
    cos, sin = jnp.cos(angles_BxLxR), jnp.sin(angles_BxLxR)
    x_rot, x_pass = x_BxLxHxK[..., :rot].astype(jnp.float32), x_BxLxHxK[..., rot:]
    x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2:]
    rotated = x_rot * cos + jnp.concatenate([-x2, x1], -1) * sin
    return jnp.concatenate([rotated.astype(x_BxLxHxK.dtype), x_pass], -1)


def _attention_mask(q_slot_L, q_pos_BxL, k_slot_S, k_pos_BxS, k_valid_BxS, window):
    mask_BxLxS = (k_slot_S[None, None, :] <= q_slot_L[None, :, None]) & k_valid_BxS[:, None, :]
    if window is not None:
        mask_BxLxS &= (q_pos_BxL[:, :, None] - k_pos_BxS[:, None, :]) < window
    return mask_BxLxS


def _einsum_attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxLxS):
    """softmax(q k^T / sqrt(K), masked) v with float32 scores; q head h reads kv head h // R."""
    B, L, H, K = q_BxLxHxK.shape
    G = k_BxSxGxK.shape[2]
    q_BxLxGxRxK = q_BxLxHxK.reshape(B, L, G, H // G, K)
    s_BxGxRxLxS = jnp.einsum("blgrk,bsgk->bgrls", q_BxLxGxRxK, k_BxSxGxK,
                             preferred_element_type=jnp.float32) / math.sqrt(K)
    s_BxGxRxLxS = jnp.where(mask_BxLxS[:, None, None], s_BxGxRxLxS, _NEG_INF)
    p_BxGxRxLxS = jax.nn.softmax(s_BxGxRxLxS, axis=-1).astype(v_BxSxGxK.dtype)
    return jnp.einsum("bgrls,bsgk->blgrk", p_BxGxRxLxS, v_BxSxGxK).reshape(B, L, H, K)


def _dot_product_implementation(config: DecoderConfig, causal: bool) -> str | None:
    """cuDNN flash attention where it applies (GPU, 16-bit compute, no KV cache, head_dim a
    multiple of 8 up to 128), else None (= XLA; `implementation=None` is XLA in jax 0.10)."""
    if (jax.default_backend() == "gpu" and causal and config.head_dim % 8 == 0
            and config.head_dim <= 128 and config.dtype in ("bfloat16", "float16")):
        return "cudnn"
    return None


def _fused_attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxLxS, config, causal: bool):
    """`jax.nn.dot_product_attention` (GQA natively: q head h reads kv head h // R) under our
    general mask; `causal` (slots of q and k aligned, no cache) lets cuDNN skip masked blocks."""
    impl = _dot_product_implementation(config, causal)
    kwargs = dict(mask=mask_BxLxS[:, None], is_causal=causal)
    if impl is not None:
        try:  # shapes/versions cuDNN refuses at trace time fall back to XLA
            return jax.nn.dot_product_attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK,
                                                implementation=impl, **kwargs)
        except (ValueError, NotImplementedError, RuntimeError):
            pass
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, **kwargs)


class _Attention(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS, kv_cache, layer, cache_index):
        """`kv_cache`: None or {"k", "v"} of every layer, [layers, B, S, kv_heads, K]; this
        layer's L new keys/values are written at [layer, :, cache_index]."""
        cfg = self.config
        D, H, G, K = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt = cfg.compute_dtype
        zeros = nn.initializers.zeros

        def proj(name, heads, axis):
            w = _param(self, f"{name}_kernel", (D, heads, K), ("embed", axis, "kv"))
            y = jnp.einsum("bld,dhk->blhk", x_BxLxD, w.astype(dt))
            if cfg.qkv_bias:
                y = y + _param(self, f"{name}_bias", (heads, K), (axis, "kv"), zeros).astype(dt)
            return y

        if self.has_variable("params", "qkv_kernel"):  # fused by `fuse_for_decoding`
            qkv = x_BxLxD @ self.get_variable("params", "qkv_kernel").astype(dt)
            if cfg.qkv_bias:
                qkv = qkv + self.get_variable("params", "qkv_bias").astype(dt)
            B, L = x_BxLxD.shape[:2]
            q, k, v = jnp.split(qkv, [H * K, (H + G) * K], axis=-1)
            q_BxLxHxK = _rope(q.reshape(B, L, H, K), positions_BxL, cfg)
            k_BxLxGxK = _rope(k.reshape(B, L, G, K), positions_BxL, cfg)
            v_BxLxGxK = v.reshape(B, L, G, K)
        else:
            q_BxLxHxK = _rope(proj("q", H, "heads"), positions_BxL, cfg)
            k_BxLxGxK = _rope(proj("k", G, "kv_heads"), positions_BxL, cfg)
            v_BxLxGxK = proj("v", G, "kv_heads")
        q_BxLxHxK = nn.with_logical_constraint(q_BxLxHxK.astype(dt),
                                               ("batch", "length", "heads", "kv"))
        k_BxSxGxK, v_BxSxGxK = k_BxLxGxK.astype(dt), v_BxLxGxK.astype(dt)
        if kv_cache is not None:
            start = (layer, 0, cache_index, 0, 0)
            kv_cache = {"k": jax.lax.dynamic_update_slice(kv_cache["k"], k_BxSxGxK[None], start),
                        "v": jax.lax.dynamic_update_slice(kv_cache["v"], v_BxSxGxK[None], start)}
            k_BxSxGxK = jax.lax.dynamic_index_in_dim(kv_cache["k"], layer, keepdims=False)
            v_BxSxGxK = jax.lax.dynamic_index_in_dim(kv_cache["v"], layer, keepdims=False)

        if cfg.attention == "einsum":
            o_BxLxHxK = _einsum_attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxLxS)
        else:
            o_BxLxHxK = _fused_attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxLxS, cfg,
                                         causal=kv_cache is None)
        w_o = _param(self, "o_kernel", (H, K, D), ("heads", "kv", "embed"))
        out_BxLxD = jnp.einsum("blhk,hkd->bld", o_BxLxHxK, w_o.astype(dt))
        if cfg.attn_out_bias:
            out_BxLxD = out_BxLxD + _param(self, "o_bias", (D,), ("embed",), zeros).astype(dt)
        return out_BxLxD, kv_cache


class _Mlp(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        cfg = self.config
        D, F, dt = cfg.embed_dim, cfg.mlp_dim, cfg.compute_dtype
        zeros = nn.initializers.zeros

        def dense(name, shape, axes, x):
            y = x @ _param(self, f"{name}_kernel", shape, axes).astype(dt)
            if cfg.mlp_bias:
                y = y + _param(self, f"{name}_bias", shape[-1:], axes[-1:], zeros).astype(dt)
            return y

        if self.has_variable("params", "gate_up_kernel"):  # fused by `fuse_for_decoding`
            gu = x_BxLxD @ self.get_variable("params", "gate_up_kernel").astype(dt)
            if cfg.mlp_bias:
                gu = gu + self.get_variable("params", "gate_up_bias").astype(dt)
            h_BxLxF = nn.silu(gu[..., :F]) * gu[..., F:]
        elif cfg.mlp == "swiglu":
            h_BxLxF = nn.silu(dense("gate", (D, F), ("embed", "mlp"), x_BxLxD))
            h_BxLxF = h_BxLxF * dense("up", (D, F), ("embed", "mlp"), x_BxLxD)
        else:
            h_BxLxF = nn.gelu(dense("up", (D, F), ("embed", "mlp"), x_BxLxD),
                              approximate=cfg.mlp == "gelu_tanh")
        h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "mlp"))
        return dense("down", (F, D), ("mlp", "embed"), h_BxLxF)


class _Block(nn.Module):
    """One pre-norm layer as a scan body: carry (hidden, KV cache of all layers), per-layer
    input the layer index; positions, mask and cache index are broadcast."""

    config: DecoderConfig

    @nn.compact
    def __call__(self, carry, layer, positions_BxL, mask_BxLxS, cache_index):
        cfg = self.config
        x_BxLxD, kv_cache = carry
        attn_BxLxD, kv_cache = _Attention(cfg, name="attn")(
            _Norm(cfg, name="attn_norm")(x_BxLxD), positions_BxL, mask_BxLxS, kv_cache, layer,
            cache_index)
        if cfg.parallel_residual:
            x_BxLxD = x_BxLxD + attn_BxLxD + _Mlp(cfg, name="mlp")(
                _Norm(cfg, name="mlp_norm")(x_BxLxD))
        else:
            x_BxLxD = x_BxLxD + attn_BxLxD
            x_BxLxD = x_BxLxD + _Mlp(cfg, name="mlp")(_Norm(cfg, name="mlp_norm")(x_BxLxD))
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))
        return (x_BxLxD, kv_cache), None


REMAT_POLICIES = {"dots_saveable": jax.checkpoint_policies.dots_saveable,
                  "full": jax.checkpoint_policies.nothing_saveable}


class Decoder(nn.Module):
    """Returns final-normed hidden states; `unembed` maps them to logits.

    The layers are one `nn.scan` over parameters stacked on a leading "layers" axis (params
    ["layers"][...] has shape [num_layers, ...]), so tracing and compile time do not grow with
    depth; with `config.remat` != "none" the scanned block is rematerialised under the matching
    `jax.checkpoint_policies` policy."""

    config: DecoderConfig

    @nn.compact
    def __call__(self, tokens_BxL, positions_BxL, mask_BxLxS, kv_cache=None, cache_index=0):
        cfg = self.config
        table = _param(self, "embedding", (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"),
                       nn.initializers.normal(cfg.init_std))
        x_BxLxD = jnp.take(table, tokens_BxL, axis=0).astype(cfg.compute_dtype)
        block = _Block
        if cfg.remat != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                         length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        (x_BxLxD, kv_cache), _ = layers(cfg, name="layers")(
            (x_BxLxD, kv_cache), jnp.arange(cfg.num_layers), positions_BxL, mask_BxLxS,
            jnp.asarray(cache_index, jnp.int32))
        x_BxLxD = _Norm(cfg, name="final_norm")(x_BxLxD)
        if not cfg.tied_embeddings:
            _param(self, "lm_head", (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"))
        return x_BxLxD, kv_cache
