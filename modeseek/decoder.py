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
  init_cache(config, batch, length) -> cache   k/v of all layers [layers, B, length, kv_heads,
                                          K], slot mask/positions [B, length], write index
  cache_axes(config) -> logical axis names matching init_cache's tree
  forward_cached(params, config, tokens_BxL, cache, *, token_mask_BxL, positions_BxL)
      -> (hidden_BxLxD, cache)            writes the L new tokens at slot cache["index"]
  unembed(params, config, hidden_...xD) -> logits float32
  fuse_for_decoding(params, config) -> params with q|k|v and gate|up concatenated (sampling)
  unstack_layers(params) -> params with a tuple of per-layer trees (sampling: no scan)
  truncate_layers(params, num_layers) -> params of the first num_layers layers (a trunk)
  init_scalar_head(key, config) / init_scalar_model(key, config) -> {"decoder", "head"}
  token_values(params, config, tokens_BxL, mask_BxL) -> BxL   (PPO value per position)
  score(params, config, tokens_BxL, mask_BxL) -> B            (reward at the last non-pad token)

Masking convention: a token attends to every earlier-or-same slot whose mask is 1 (and, with a
sliding window, whose position is within `sliding_window` of its own). Pads may sit anywhere
(left, right or in the middle of prompt+response); positions default to cumsum(mask) - 1 so
padding never shifts rotary phases.

Layout: per-layer parameters are stacked under params["layers"] with a leading axis of size
num_layers (logical axis "layers", never sharded), e.g. params["layers"]["attn"]["q_kernel"] is
[num_layers, embed, heads, head_dim]; the layers run as one scan (compile time flat in depth),
except after `unstack_layers` (the sampler), where `forward_cached` loops over them.
`remat` ("none" | "dots_saveable" | "full") rematerialises each layer in the backward pass
(`jax.checkpoint` with `checkpoint_policies.dots_saveable` / `nothing_saveable`): same
gradients, less activation memory. `attention` = "dot_product" runs
`jax.nn.dot_product_attention` (cuDNN flash attention on GPU in 16-bit compute without a KV
cache, XLA elsewhere); "einsum" is the explicit float32-score einsum. Both compute
softmax(q k^T / sqrt(head_dim) + mask) v with float32 scores and the same mask.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from modeseek.decoder_layers import REMAT_POLICIES, Decoder, _attention_mask, _Block, _Norm

Params = dict[str, Any]


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
    remat: str = "none"  # "none" | "dots_saveable" | "full"
    attention: str = "dot_product"  # "dot_product" | "einsum"

    def __post_init__(self):
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"DecoderConfig.norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.mlp not in ("swiglu", "gelu", "gelu_tanh"):
            raise ValueError(f"DecoderConfig.mlp must be swiglu|gelu|gelu_tanh, got {self.mlp!r}")
        if self.remat not in ("none", *REMAT_POLICIES):
            raise ValueError(f"DecoderConfig.remat must be none|dots_saveable|full, got "
                             f"{self.remat!r}")
        if self.attention not in ("dot_product", "einsum"):
            raise ValueError(f"DecoderConfig.attention must be dot_product|einsum, got "
                             f"{self.attention!r}")
        if self.num_layers < 1:
            raise ValueError(f"DecoderConfig.num_layers must be >= 1, got {self.num_layers}")
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


# ----------------------------------------------------------------------------- functional API


def _abstract_boxed(config: DecoderConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, 1, 1), bool)
    return jax.eval_shape(
        lambda k: Decoder(config).init(k, tokens, tokens, mask)["params"], jax.random.key(0))


@functools.partial(jax.jit, static_argnums=1)
def init_params(key: jax.Array, config: DecoderConfig) -> Params:
    """Random decoder parameters (a plain nested dict of arrays) for `config`."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, 1, 1), bool)
    return nn.unbox(Decoder(config).init(key, tokens, tokens, mask)["params"])


def param_axes(config: DecoderConfig) -> Params:
    """Logical axis names per parameter, e.g. ("embed", "heads", "kv"); same tree as params.
    Stacked layer parameters lead with "layers" (map it to no mesh axis)."""
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
    chex.assert_rank(tokens_BxL, 2)
    if attention_mask_BxL is not None:
        chex.assert_equal_shape([tokens_BxL, attention_mask_BxL])
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
    """Pre-allocated KV cache of `length` slots for every layer, k/v [layers, B, length,
    kv_heads, head_dim]; `mask`/`pos` record which slots hold tokens."""
    shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
    return {"k": jnp.zeros(shape, config.compute_dtype),
            "v": jnp.zeros(shape, config.compute_dtype),
            "mask": jnp.zeros((batch, length), bool),
            "pos": jnp.zeros((batch, length), jnp.int32),
            "index": jnp.zeros((), jnp.int32)}


def fuse_for_decoding(params: Params, config: DecoderConfig) -> Params:
    """Same model, fewer and wider matmuls: q|k|v and gate|up kernels concatenated per layer
    (stacked: qkv_kernel is [layers, embed, (heads + 2 kv_heads) * head_dim]).

    For sampling loops on CPU, where per-op overhead and small matmuls dominate; call it once,
    outside the loop (the sampler does). Not for training: the fused tree has other names."""
    N, D = config.num_layers, config.embed_dim
    layers = dict(params["layers"])
    attn = dict(layers["attn"])
    attn["qkv_kernel"] = jnp.concatenate(
        [attn.pop(f"{x}_kernel").reshape(N, D, -1) for x in "qkv"], axis=-1)
    if config.qkv_bias:
        attn["qkv_bias"] = jnp.concatenate(
            [attn.pop(f"{x}_bias").reshape(N, -1) for x in "qkv"], axis=-1)
    layers["attn"] = attn
    if config.mlp == "swiglu":
        mlp = dict(layers["mlp"])
        mlp["gate_up_kernel"] = jnp.concatenate([mlp.pop("gate_kernel"), mlp.pop("up_kernel")],
                                                axis=-1)
        if config.mlp_bias:
            mlp["gate_up_bias"] = jnp.concatenate([mlp.pop("gate_bias"), mlp.pop("up_bias")],
                                                  axis=-1)
        layers["mlp"] = mlp
    return {**params, "layers": layers}


def _depth(params: Params) -> int:
    """Number of layers stacked on the leading axis of params["layers"]."""
    return max(x.shape[0] for x in jax.tree.leaves(params["layers"]))


def truncate_layers(params: Params, num_layers: int) -> Params:
    """The first `num_layers` layers of a decoder's params (embedding, final norm and lm_head
    kept): a trunk for `config.replace(num_layers=num_layers)`. Works on fused params too."""
    depth = _depth(params)
    if not 1 <= num_layers <= depth:
        raise ValueError(f"truncate_layers: num_layers={num_layers} must be in 1..{depth} "
                         "(the length of the stacked params['layers'] axis)")
    return {**params, "layers": jax.tree.map(lambda x: x[:num_layers], params["layers"])}


def cache_axes(config: DecoderConfig) -> dict[str, Any]:
    """Logical axis names for `init_cache`'s tree (to shard a cache by the same rules)."""
    del config
    kv = ("layers", "batch", "cache_length", "kv_heads", "kv")
    return {"k": kv, "v": kv, "mask": ("batch", "cache_length"),
            "pos": ("batch", "cache_length"), "index": ()}


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
    kv = {"k": cache["k"], "v": cache["v"]}
    if isinstance(params["layers"], (list, tuple)):  # from `unstack_layers`
        hidden_BxLxD, kv = _decoder_unrolled(params, config, tokens_BxL, positions_BxL,
                                             mask_BxLxS, kv, index)
    else:
        hidden_BxLxD, kv = Decoder(config).apply(
            {"params": params}, tokens_BxL, positions_BxL, mask_BxLxS, kv, index)
    return hidden_BxLxD, {**kv, "mask": k_valid_BxS, "pos": k_pos_BxS, "index": index + L}


def unstack_layers(params: Params) -> Params:
    """Same model with params["layers"] as a tuple of per-layer trees (layer i's arrays are
    the stacked arrays' row i); `forward_cached` then runs the layers as a Python loop.

    For sampling on CPU: inside a scan, XLA:CPU copies each layer's weights out of the
    stacked arrays on every step (a second pass over all weights per token); unstacked once
    per call, outside the token loop, every step reads each weight once. Works on fused
    params (`fuse_for_decoding`) too; not for training (the tree has other structure)."""
    return {**params, "layers": tuple(jax.tree.map(lambda x, i=i: x[i], params["layers"])
                                      for i in range(_depth(params)))}


def _decoder_unrolled(params, config, tokens_BxL, positions_BxL, mask_BxLxS, kv_cache,
                      cache_index):
    """`Decoder.apply` for unstacked layers: embedding, each layer's `_Block`, final norm."""
    x_BxLxD = jnp.take(params["embedding"], tokens_BxL, axis=0).astype(config.compute_dtype)
    carry = (x_BxLxD, kv_cache)
    for layer, layer_params in enumerate(params["layers"]):
        carry, _ = _Block(config).apply({"params": layer_params}, carry, layer, positions_BxL,
                                        mask_BxLxS, jnp.asarray(cache_index, jnp.int32))
    return _Norm(config).apply({"params": params["final_norm"]}, carry[0]), carry[1]


# ----------------------------------------------------------------------------- scalar heads


def init_scalar_head(key: jax.Array, config: DecoderConfig) -> Params:
    """A scalar head {"kernel" [D] ~ N(0, 1/D), "bias" 0} read from the final hidden states
    (reward models, PPO value functions)."""
    kernel = jax.random.normal(key, (config.embed_dim,), jnp.float32) / math.sqrt(config.embed_dim)
    return {"kernel": kernel, "bias": jnp.zeros((), jnp.float32)}


def scalar_head_axes(config: DecoderConfig) -> Params:
    del config
    return {"kernel": ("embed",), "bias": ()}


def init_scalar_model(key: jax.Array, config: DecoderConfig) -> Params:
    """{"decoder", "head"}: a decoder with a scalar head (see `score`, `token_values`)."""
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
