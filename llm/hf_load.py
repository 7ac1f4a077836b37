"""Decoder parameters from Hugging Face-named tensors, read one tensor at a time: assembled on
the host, or placed straight into their device shardings with no host copy of the model.

API:
  TensorSource(shapes, dtypes, read)    lazy HF-named tensors: `.shapes[name]`,
                                        `.dtypes[name]`, `.read(name) -> np.ndarray`
  TensorSource.from_arrays(tensors)     the same over an in-memory dict
  ModelFiles(config, arch, tensors, tokenizer, source)   an opened, unread checkpoint
  tensor_plan(src, config, arch, *, where) -> {parameter path: (HF names, one per layer)}
      every name, shape and dtype checked against config BEFORE any tensor is read
  params_from_hf(tensors_or_src, config, arch, *, source) -> host params (numpy, param_dtype)
  params_sharded(src, config, arch, shardings, *, where, num_layers=None) -> device params

Sharded loading (`params_sharded`), per parameter: read one HF tensor (`src.read`: a plain read
of its bytes), convert it to our layout (views: transpose / reshape) and to
`config.param_dtype` (no copy when the file already holds that dtype), then
`jax.make_array_from_callback` hands each addressable device its slice.
Stacked (scanned) layers [L, ...]: a zero array is created in the stacked sharding on the
devices and layer i is written into it with a donated `dynamic_update_index_in_dim`, so the
host holds one layer's tensor at a time and the devices one extra layer. Peak host memory
beyond the placed shards: one tensor as read + its cast (when the dtype changes); measured on
8 CPU devices in tests/test_llm_loading.py.
`num_layers` < the checkpoint's reads only the first layers (a reward-model trunk).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from llm.hf_layout import _IGNORED_SUFFIXES, _flat_shapes, _hf_shape, _names, _to_ours, _top_names
from llm.safetensors_io import CheckpointError
from modeseek.decoder import DecoderConfig


@dataclasses.dataclass
class ModelFiles:
    """A checkpoint opened but not read: its config, tensor names/shapes, tokenizer."""
    config: DecoderConfig
    arch: str            # the hf_layout architecture its tensor names follow
    tensors: TensorSource
    tokenizer: Any
    source: str


@dataclasses.dataclass
class TensorSource:
    """HF tensor names -> shapes and dtypes known up front; `read(name)` returns the array."""
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    read: Callable[[str], np.ndarray]

    @classmethod
    def from_arrays(cls, tensors: Mapping[str, np.ndarray]) -> TensorSource:
        return cls({n: tuple(np.shape(a)) for n, a in tensors.items()},
                   {n: np.asarray(a).dtype for n, a in tensors.items()}, tensors.__getitem__)


def _unfuse_neox(src: TensorSource, config: DecoderConfig, where: str) -> TensorSource:
    """GPT-NeoX fuses q, k, v as rows ordered (head, {q,k,v}, dim): expose the three parts
    under `...query_key_value.{q,k,v}.{weight,bias}` (each part read slices the fused one)."""
    H, K = config.num_heads, config.head_dim
    shapes, dtypes, parts = dict(src.shapes), dict(src.dtypes), {}
    for name in list(shapes):
        if ".attention.query_key_value." not in name or name.count(".") != 5:
            continue
        prefix, kind = name.rsplit(".", 1)
        shape, dtype = shapes.pop(name), dtypes.pop(name)
        if not shape or shape[0] != 3 * H * K:
            raise CheckpointError(f"{where}: tensor {name} has shape {shape}, expected first "
                                  f"dim {3 * H * K}")
        for j, x in enumerate("qkv"):
            shapes[f"{prefix}.{x}.{kind}"] = (H * K, *shape[1:])
            dtypes[f"{prefix}.{x}.{kind}"] = dtype
            parts[f"{prefix}.{x}.{kind}"] = (name, j)

    def read(name: str) -> np.ndarray:
        if name not in parts:
            return src.read(name)
        fused_name, j = parts[name]
        fused = src.read(fused_name)
        rest = fused.shape[1:]
        return np.ascontiguousarray(fused.reshape(H, 3, K, *rest)[:, j].reshape(H * K, *rest))

    return TensorSource(shapes, dtypes, read)


def _source(tensors, config: DecoderConfig, arch: str, where: str) -> TensorSource:
    src = tensors if isinstance(tensors, TensorSource) else TensorSource.from_arrays(tensors)
    return _unfuse_neox(src, config, where) if arch == "gpt_neox" else src


def tensor_plan(src: TensorSource, config: DecoderConfig, arch: str, *,
                where: str = "checkpoint") -> dict[str, tuple[str, ...]]:
    """Our parameter path -> its HF tensor names (one per layer for stacked `layers/...`),
    after checking names, shapes and dtypes against `config` without reading any tensor."""
    used: set[str] = set()

    def check(name: str, path: str, shape: tuple[int, ...]) -> str:
        if name not in src.shapes:
            raise CheckpointError(f"{where}: missing tensor {name} (for parameter {path})")
        used.add(name)
        expected = _hf_shape(path, shape)
        if tuple(src.shapes[name]) != expected:
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(src.shapes[name])}, "
                                  f"expected {expected} from config.json")
        dtype = np.dtype(src.dtypes[name])
        if dtype.kind not in "fV" and str(dtype) != "bfloat16":
            raise CheckpointError(f"{where}: tensor {name} has dtype {dtype}, expected a "
                                  "floating-point type")
        return name

    plan = {}
    for path, shape in _flat_shapes(config).items():
        if path.startswith("layers/"):
            rest = path.split("/", 1)[1]
            plan[path] = tuple(check(_names(arch, i)[rest], path, shape[1:])
                               for i in range(config.num_layers))
        else:
            plan[path] = (check(_top_names(arch)[path], path, shape),)
    extra = [n for n in src.shapes if n not in used and not n.endswith(_IGNORED_SUFFIXES)
             and not (config.tied_embeddings and n == _top_names(arch)["lm_head"])]
    if extra:
        raise CheckpointError(f"{where}: unexpected tensors {extra[:5]} (wrong architecture "
                              "or config.json?)")
    return plan


def _converted(src: TensorSource, name: str, path: str, config: DecoderConfig) -> np.ndarray:
    """One HF tensor in our layout and config.param_dtype (a view when the dtype matches)."""
    dtype = np.dtype(jnp.dtype(config.param_dtype))
    return _to_ours(path, src.read(name), config).astype(dtype, copy=False)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for path, w in flat.items():
        node = params
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = w
    return params


def _flatten(tree, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def params_from_hf(tensors, config: DecoderConfig, arch: str, *,
                   source: str = "checkpoint") -> dict[str, Any]:
    """Host params (numpy, config.param_dtype) from a dict of HF tensors or a TensorSource."""
    src = _source(tensors, config, arch, source)
    dtype = np.dtype(jnp.dtype(config.param_dtype))
    flat = {}
    for path, names in tensor_plan(src, config, arch, where=source).items():
        if path.startswith("layers/"):  # stacked [num_layers, ...]: layer i from HF layer i
            flat[path] = np.empty((len(names), *_flat_shapes(config)[path][1:]), dtype)
            for i, name in enumerate(names):
                flat[path][i] = _converted(src, name, path, config)
        else:
            flat[path] = np.array(_converted(src, names[0], path, config))
    return _nest(flat)


def _place(w: np.ndarray, sharding) -> jax.Array:
    """Each addressable device gets its slice of `w`. The callback returns views: the
    transfer copies them (measured: host peak = w + the placed shards; returning copies
    instead held a second whole copy of w until every device's slice was made)."""
    out = jax.make_array_from_callback(w.shape, sharding, lambda idx: w[idx])
    return jax.block_until_ready(out)


@functools.cache
def _libc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def _release_host_memory() -> None:
    """Hand freed heap back to the OS (glibc `malloc_trim`) between tensors: otherwise glibc
    keeps the freed read buffers and transfer staging (measured: +580 MB of RSS over a 1.4 GB
    load), and the process's peak would grow with the model instead of its largest tensor."""
    trim = _libc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _zeros(shape: tuple[int, ...], dtype, sharding):
    return jax.jit(functools.partial(jnp.zeros, shape, dtype), out_shardings=sharding)


@functools.cache
def _set_layer(sharding):
    return jax.jit(lambda stacked, x, i: jax.lax.dynamic_update_index_in_dim(stacked, x, i, 0),
                   out_shardings=sharding, donate_argnums=0)


def _layer_sharding(sharding: NamedSharding) -> NamedSharding:
    spec = tuple(sharding.spec)
    if spec and spec[0] is not None:
        raise ValueError(f"the stacked-layer axis must not be sharded, got {sharding.spec}")
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))


def params_sharded(tensors, config: DecoderConfig, arch: str, shardings, *,
                   where: str = "checkpoint", num_layers: int | None = None):
    """Device params in `shardings` (a tree like the params), read tensor by tensor (see the
    module docstring); `num_layers`: load only the first layers (default: all)."""
    src = _source(tensors, config, arch, where)
    plan = tensor_plan(src, config, arch, where=where)
    flat_sh = _flatten(shardings)
    dtype = jnp.dtype(config.param_dtype)
    out = {}
    for path, names in plan.items():
        sharding = flat_sh[path]
        if not path.startswith("layers/"):
            out[path] = _place(_converted(src, names[0], path, config), sharding)
            _release_host_memory()
            continue
        names = names[:num_layers or len(names)]
        shape = (len(names), *_flat_shapes(config)[path][1:])
        stacked = _zeros(shape, dtype, sharding)()
        layer_sharding = _layer_sharding(sharding)
        for i, name in enumerate(names):
            piece = _place(_converted(src, name, path, config), layer_sharding)
            stacked = jax.block_until_ready(_set_layer(sharding)(stacked, piece, np.int32(i)))
            del piece  # one layer at a time on the host and (beyond the stack) the devices
            _release_host_memory()
        out[path] = stacked
    return _nest(out)
