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


class _Attention(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS, kv_cache, cache_index):
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
        q_BxLxHxK = nn.with_logical_constraint(q_BxLxHxK, ("batch", "length", "heads", "kv"))
        # keys/values as [B, kv_heads, slots, K]: the layout the decode-step dots are fastest on
        k_BxGxLxK = k_BxLxGxK.transpose(0, 2, 1, 3).astype(dt)
        v_BxGxLxK = v_BxLxGxK.transpose(0, 2, 1, 3).astype(dt)
        if kv_cache is not None:
            start = (0, 0, cache_index, 0)
            k_BxGxSxK = jax.lax.dynamic_update_slice(kv_cache["k"], k_BxGxLxK, start)
            v_BxGxSxK = jax.lax.dynamic_update_slice(kv_cache["v"], v_BxGxLxK, start)
            kv_cache = {"k": k_BxGxSxK, "v": v_BxGxSxK}
        else:
            k_BxGxSxK, v_BxGxSxK = k_BxGxLxK, v_BxGxLxK

        B, L = x_BxLxD.shape[:2]
        q_BxLxGxRxK = q_BxLxHxK.reshape(B, L, G, H // G, K)  # q head h uses kv head h // R
        s_BxGxRxLxS = jnp.einsum("blgrk,bgsk->bgrls", q_BxLxGxRxK, k_BxGxSxK,
                                 preferred_element_type=jnp.float32) / math.sqrt(K)
        s_BxGxRxLxS = jnp.where(mask_BxLxS[:, None, None], s_BxGxRxLxS, _NEG_INF)
        p_BxGxRxLxS = jax.nn.softmax(s_BxGxRxLxS, axis=-1).astype(dt)
        o_BxLxHxK = jnp.einsum("bgrls,bgsk->blgrk", p_BxGxRxLxS, v_BxGxSxK).reshape(B, L, H, K)
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
    config: DecoderConfig

    @nn.compact
    def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS, kv_cache, cache_index):
        cfg = self.config
        attn_BxLxD, kv_cache = _Attention(cfg, name="attn")(
            _Norm(cfg, name="attn_norm")(x_BxLxD), positions_BxL, mask_BxLxS, kv_cache,
            cache_index)
        if cfg.parallel_residual:
            x_BxLxD = x_BxLxD + attn_BxLxD + _Mlp(cfg, name="mlp")(
                _Norm(cfg, name="mlp_norm")(x_BxLxD))
        else:
            x_BxLxD = x_BxLxD + attn_BxLxD
            x_BxLxD = x_BxLxD + _Mlp(cfg, name="mlp")(_Norm(cfg, name="mlp_norm")(x_BxLxD))
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))
        return x_BxLxD, kv_cache


class Decoder(nn.Module):
    """Returns final-normed hidden states; `unembed` maps them to logits."""

    config: DecoderConfig

    @nn.compact
    def __call__(self, tokens_BxL, positions_BxL, mask_BxLxS, kv_caches=None, cache_index=0):
        cfg = self.config
        table = _param(self, "embedding", (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"),
                       nn.initializers.normal(cfg.init_std))
        x_BxLxD = jnp.take(table, tokens_BxL, axis=0).astype(cfg.compute_dtype)
        new_caches = []
        for i in range(cfg.num_layers):
            x_BxLxD, c = _Block(cfg, name=f"layer_{i}")(
                x_BxLxD, positions_BxL, mask_BxLxS,
                None if kv_caches is None else kv_caches[i], cache_index)
            new_caches.append(c)
        x_BxLxD = _Norm(cfg, name="final_norm")(x_BxLxD)
        if not cfg.tied_embeddings:
            _param(self, "lm_head", (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"))
        return x_BxLxD, (None if kv_caches is None else tuple(new_caches))
