"""Pre-norm decoder-only transformer (Flax linen, used functionally) covering Llama-family and
GPT-NeoX checkpoints.

API:
  DecoderConfig(...)                      frozen, hashable (a valid static jit argument); presets
                                          `tiny`, `smollm2_135m`, `pythia_160m`, `llama2_7b`, ...
  init_params(key, config) -> params      nested dict of arrays
  param_axes(config) -> pytree            logical axis names (tuples of str) matching params
  num_params(config) -> int
  forward(params, config, tokens_BxL, *, attention_mask_BxL=None, positions_BxL=None,
          return_hidden=False) -> logits_BxLxV float32 (or (logits, hidden_BxLxD))
  positions_from_mask(mask_BxL) -> positions_BxL
  init_cache(config, batch, length) -> cache   k/v per layer [B, kv_heads, length, K], slot
                                          mask/positions [B, length], write index
  cache_axes(config) -> logical axis names matching init_cache's tree
  forward_cached(params, config, tokens_BxL, cache, *, token_mask_BxL, positions_BxL)
      -> (hidden_BxLxD, cache)            writes the L new tokens at slot cache["index"]
  unembed(params, config, hidden_...xD) -> logits float32
  fuse_for_decoding(params, config) -> params with q|k|v and gate|up concatenated (sampling)
  init_scalar_head(key, config) / init_scalar_model(key, config) -> {"decoder", "head"}
  token_values(params, config, tokens_BxL, mask_BxL) -> BxL   (PPO value per position)
  score(params, config, tokens_BxL, mask_BxL) -> B            (reward at the last non-pad token)

Masking convention: a token attends to every earlier-or-same slot whose mask is 1 (and, with a
sliding window, whose position is within `sliding_window` of its own). Pads may sit anywhere
(left, right or in the middle of prompt+response); positions default to cumsum(mask) - 1 so
padding never shifts rotary phases.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = dict[str, Any]
_NEG_INF = -1e30  # finite: a fully masked (pad) row gives a uniform softmax, not NaN


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    embed_dim: int
    mlp_dim: int
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0
    mlp: str = "swiglu"  # "swiglu" | "gelu" (exact erf) | "gelu_tanh"
    parallel_residual: bool = False
    tied_embeddings: bool = False
    sliding_window: int | None = None
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    max_len: int = 2048
    dtype: str = "float32"  # activations / matmul inputs
    param_dtype: str = "float32"
    init_std: float = 0.02

    def __post_init__(self):
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"DecoderConfig.norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.mlp not in ("swiglu", "gelu", "gelu_tanh"):
            raise ValueError(f"DecoderConfig.mlp must be swiglu|gelu|gelu_tanh, got {self.mlp!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.rotary_dim % 2:
            raise ValueError(f"rotary dim {self.rotary_dim} (head_dim * rotary_fraction) is odd")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> DecoderConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def tiny(cls, **overrides) -> DecoderConfig:
        """~50k parameters: tests and the synthetic tier."""
        base = dict(vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12,
                    embed_dim=48, mlp_dim=128, max_len=256, tied_embeddings=True)
        return cls(**{**base, **overrides})

    @classmethod
    def smollm2_135m(cls, **overrides) -> DecoderConfig:
        base = dict(vocab_size=49152, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                    embed_dim=576, mlp_dim=1536, norm_eps=1e-5, rope_theta=100000.0,
                    tied_embeddings=True, max_len=8192)
        return cls(**{**base, **overrides})

    @classmethod
    def pythia_160m(cls, **overrides) -> DecoderConfig:
        base = dict(vocab_size=50304, num_layers=12, num_heads=12, num_kv_heads=12, head_dim=64,
                    embed_dim=768, mlp_dim=3072, norm="layer", rotary_fraction=0.25, mlp="gelu",
                    parallel_residual=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True)
        return cls(**{**base, **overrides})

    @classmethod
    def pythia_1_4b(cls, **overrides) -> DecoderConfig:
        return cls.pythia_160m(num_layers=24, num_heads=16, num_kv_heads=16, head_dim=128,
                               embed_dim=2048, mlp_dim=8192, **overrides)

    @classmethod
    def llama2_7b(cls, **overrides) -> DecoderConfig:
        base = dict(vocab_size=32000, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                    embed_dim=4096, mlp_dim=11008, norm_eps=1e-5, max_len=4096)
        return cls(**{**base, **overrides})

    @classmethod
    def mistral_7b(cls, **overrides) -> DecoderConfig:
        base = dict(vocab_size=32000, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                    embed_dim=4096, mlp_dim=14336, sliding_window=4096, max_len=32768)
        return cls(**{**base, **overrides})


# ----------------------------------------------------------------------------- modules


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


# ----------------------------------------------------------------------------- functional API


def _abstract_boxed(config: DecoderConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, 1, 1), bool)
    return jax.eval_shape(
        lambda k: Decoder(config).init(k, tokens, tokens, mask)["params"], jax.random.key(0))


@functools.partial(jax.jit, static_argnums=1)
def init_params(key: jax.Array, config: DecoderConfig) -> Params:
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, 1, 1), bool)
    return nn.unbox(Decoder(config).init(key, tokens, tokens, mask)["params"])


def param_axes(config: DecoderConfig) -> Params:
    """Logical axis names per parameter, e.g. ("embed", "heads", "kv"); same tree as params."""
    boxed = _abstract_boxed(config)
    return jax.tree.map(lambda b: tuple(b.names), boxed,
                        is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))


def param_shapes(config: DecoderConfig) -> Params:
    return jax.tree.map(lambda s: (tuple(s.shape), s.dtype), nn.unbox(_abstract_boxed(config)))


def num_params(config: DecoderConfig) -> int:
    return sum(math.prod(s.shape) for s in jax.tree.leaves(nn.unbox(_abstract_boxed(config))))


def positions_from_mask(mask_BxL: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=-1) - 1, 0)


def unembed(params: Params, config: DecoderConfig, hidden_xD: jax.Array) -> jax.Array:
    """Logits in float32 (the matmul accumulates in float32 from compute-dtype inputs)."""
    dt = config.compute_dtype
    if config.tied_embeddings:
        return jnp.einsum("...d,vd->...v", hidden_xD.astype(dt), params["embedding"].astype(dt),
                          preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", hidden_xD.astype(dt), params["lm_head"].astype(dt),
                      preferred_element_type=jnp.float32)


def forward(params: Params, config: DecoderConfig, tokens_BxL: jax.Array, *,
            attention_mask_BxL: jax.Array | None = None, positions_BxL: jax.Array | None = None,
            return_hidden: bool = False):
    """Logits BxLxV (float32) at every position; logits at t predict token t+1."""
    B, L = tokens_BxL.shape
    if attention_mask_BxL is None:
        attention_mask_BxL = jnp.ones((B, L), bool)
    valid_BxL = attention_mask_BxL.astype(bool)
    if positions_BxL is None:
        positions_BxL = positions_from_mask(valid_BxL)
    slots_L = jnp.arange(L)
    mask_BxLxL = _attention_mask(slots_L, positions_BxL, slots_L, positions_BxL, valid_BxL,
                                 config.sliding_window)
    hidden_BxLxD, _ = Decoder(config).apply({"params": params}, tokens_BxL, positions_BxL,
                                            mask_BxLxL)
    logits_BxLxV = nn.with_logical_constraint(unembed(params, config, hidden_BxLxD),
                                              ("batch", "length", "vocab"))
    return (logits_BxLxV, hidden_BxLxD) if return_hidden else logits_BxLxV


def init_cache(config: DecoderConfig, batch: int, length: int) -> dict[str, Any]:
    """Pre-allocated KV cache of `length` slots; `mask`/`pos` record which slots hold tokens."""
    shape = (batch, config.num_kv_heads, length, config.head_dim)
    layer = lambda: {"k": jnp.zeros(shape, config.compute_dtype),
                     "v": jnp.zeros(shape, config.compute_dtype)}
    return {"layers": tuple(layer() for _ in range(config.num_layers)),
            "mask": jnp.zeros((batch, length), bool),
            "pos": jnp.zeros((batch, length), jnp.int32),
            "index": jnp.zeros((), jnp.int32)}


def fuse_for_decoding(params: Params, config: DecoderConfig) -> Params:
    """Same model, fewer and wider matmuls: q|k|v and gate|up kernels concatenated per layer.

    For sampling loops on CPU, where per-op overhead and small matmuls dominate; call it once,
    outside the loop (the sampler does). Not for training: the fused tree has other names."""
    D = config.embed_dim
    fused = dict(params)
    for i in range(config.num_layers):
        layer = dict(params[f"layer_{i}"])
        attn = dict(layer["attn"])
        parts = [attn.pop(f"{x}_kernel").reshape(D, -1) for x in "qkv"]
        attn["qkv_kernel"] = jnp.concatenate(parts, axis=1)
        if config.qkv_bias:
            attn["qkv_bias"] = jnp.concatenate([attn.pop(f"{x}_bias").reshape(-1) for x in "qkv"])
        layer["attn"] = attn
        if config.mlp == "swiglu":
            mlp = dict(layer["mlp"])
            mlp["gate_up_kernel"] = jnp.concatenate([mlp.pop("gate_kernel"),
                                                     mlp.pop("up_kernel")], axis=1)
            if config.mlp_bias:
                mlp["gate_up_bias"] = jnp.concatenate([mlp.pop("gate_bias"), mlp.pop("up_bias")])
            layer["mlp"] = mlp
        fused[f"layer_{i}"] = layer
    return fused


def cache_axes(config: DecoderConfig) -> dict[str, Any]:
    """Logical axis names for `init_cache`'s tree (to shard a cache by the same rules)."""
    kv = ("batch", "kv_heads", "cache_length", "kv")
    return {"layers": tuple({"k": kv, "v": kv} for _ in range(config.num_layers)),
            "mask": ("batch", "cache_length"), "pos": ("batch", "cache_length"), "index": ()}


def forward_cached(params: Params, config: DecoderConfig, tokens_BxL: jax.Array,
                   cache: dict[str, Any], *, token_mask_BxL: jax.Array, positions_BxL: jax.Array):
    """Runs L new tokens against the cache (prefill: L = prompt length; decode: L = 1)."""
    L = tokens_BxL.shape[1]
    S = cache["mask"].shape[1]
    index = cache["index"]
    k_valid_BxS = jax.lax.dynamic_update_slice(cache["mask"], token_mask_BxL.astype(bool),
                                               (0, index))
    k_pos_BxS = jax.lax.dynamic_update_slice(cache["pos"], positions_BxL.astype(jnp.int32),
                                             (0, index))
    mask_BxLxS = _attention_mask(index + jnp.arange(L), positions_BxL, jnp.arange(S), k_pos_BxS,
                                 k_valid_BxS, config.sliding_window)
    hidden_BxLxD, layers = Decoder(config).apply(
        {"params": params}, tokens_BxL, positions_BxL, mask_BxLxS, cache["layers"], index)
    return hidden_BxLxD, {"layers": layers, "mask": k_valid_BxS, "pos": k_pos_BxS,
                          "index": index + L}


# ----------------------------------------------------------------------------- scalar heads


def init_scalar_head(key: jax.Array, config: DecoderConfig) -> Params:
    kernel = jax.random.normal(key, (config.embed_dim,), jnp.float32) / math.sqrt(config.embed_dim)
    return {"kernel": kernel, "bias": jnp.zeros((), jnp.float32)}


def scalar_head_axes(config: DecoderConfig) -> Params:
    del config
    return {"kernel": ("embed",), "bias": ()}


def init_scalar_model(key: jax.Array, config: DecoderConfig) -> Params:
    k_dec, k_head = jax.random.split(key)
    return {"decoder": init_params(k_dec, config), "head": init_scalar_head(k_head, config)}


def token_values(params: Params, config: DecoderConfig, tokens_BxL: jax.Array,
                 mask_BxL: jax.Array) -> jax.Array:
    """Scalar per position (float32): value of the prefix ending at t, for PPO critics."""
    _, hidden_BxLxD = forward(params["decoder"], config, tokens_BxL, attention_mask_BxL=mask_BxL,
                              return_hidden=True)
    head = params["head"]
    return hidden_BxLxD.astype(jnp.float32) @ head["kernel"] + head["bias"]


def last_token_index(mask_BxL: jax.Array) -> jax.Array:
    """Index of the last non-pad slot per row (works for left, right and middle padding)."""
    L = mask_BxL.shape[1]
    return L - 1 - jnp.argmax(mask_BxL[:, ::-1].astype(bool), axis=1)


def score(params: Params, config: DecoderConfig, tokens_BxL: jax.Array,
          mask_BxL: jax.Array) -> jax.Array:
    """Reward-model score: the scalar head at each row's last non-pad token, shape B."""
    values_BxL = token_values(params, config, tokens_BxL, mask_BxL)
    return jnp.take_along_axis(values_BxL, last_token_index(mask_BxL)[:, None], axis=1)[:, 0]
