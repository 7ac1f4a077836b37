"""Device mesh, logical-axis rules and sharded parameter placement.

The mesh has three named axes (any may be 1):

    data    pure data parallelism: parameters replicated, batch split;
    fsdp    batch split *and* parameters sharded over their `embed` dimension (ZeRO-3 style:
            XLA all-gathers each weight where it is used and reduce-scatters its gradient);
    tensor  Megatron-style model parallelism over heads / MLP hidden units / vocabulary.

`modeseek.decoder.param_axes` names every parameter dimension with a logical axis ('embed',
'heads', 'kv_heads', 'kv', 'mlp', 'vocab'); `LOGICAL_RULES` maps those names (and the activation
names 'batch', 'length') to mesh axes. A dimension whose size is not divisible by its mesh axes
is replicated instead (e.g. SmolLM2's 9 heads on a tensor axis of 2), and the fallback is
returned so callers can log it.

Parameters are never materialised on one device first: `init_sharded` traces the initialiser
with `jax.eval_shape` and runs it under `jit(out_shardings=...)`, so every device computes only
its own shards; `place_params` puts host arrays (a loaded checkpoint) straight into the same
shardings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("layers", None),  # the scanned decoder's stacked-layer axis: never sharded
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all, across processes).

    A size of -1 on one axis takes all remaining devices. Axes are `Auto` (GSPMD propagation),
    not JAX 0.10's default `Explicit`.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} "
                         f"tensor={tensor}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices not divisible by the fixed axes {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} × fsdp={sizes[1]} × tensor={sizes[2]} = "
                         f"{math.prod(sizes)} devices, but {len(devices)} are available")
    grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _mesh_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_RULES) -> tuple[PartitionSpec, list[str]]:
    """PartitionSpec for one array with logical dimension `names`, and the names that had to be
    replicated because their size does not divide by their mesh axes (or the axis was used)."""
    table = dict(rules)
    used: set[str] = set()
    spec, fallbacks = [], []
    for name, size in zip(names, shape, strict=True):
        axes = table.get(name) if name is not None else None
        flat = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        flat = tuple(a for a in flat if mesh.shape[a] > 1)
        if not flat:
            spec.append(None)
        elif size % _mesh_size(mesh, flat) or used.intersection(flat):
            spec.append(None)
            fallbacks.append(f"{name}({size})")
        else:
            used.update(flat)
            spec.append(flat[0] if len(flat) == 1 else flat)
    return PartitionSpec(*spec), fallbacks


def tree_shardings(axes_tree, shapes_tree, mesh: Mesh, rules=LOGICAL_RULES):
    """NamedShardings for a tree of logical axis tuples and matching shapes/ShapeDtypeStructs.

    Returns (shardings, fallbacks) where `fallbacks` lists replicated dimensions."""
    fallbacks: list[str] = []

    def one(names, shaped):
        spec, bad = logical_to_spec(names, np.shape(shaped) if not hasattr(shaped, "shape")
                                    else shaped.shape, mesh, rules)
        fallbacks.extend(bad)
        return NamedSharding(mesh, spec)

    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(n, str | None) for n in x)
    shardings = jax.tree.map(one, axes_tree, shapes_tree, is_leaf=is_axes)
    return shardings, sorted(set(fallbacks))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension split over data × fsdp; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def init_sharded(init_fn: Callable, shardings, *args):
    """Run `init_fn(*args)` so each output leaf is created directly in its sharding."""
    return jax.jit(init_fn, out_shardings=shardings)(*args)


def place_params(params, shardings):
    """Put a host (numpy or single-device) parameter tree into `shardings`, one shard per
    device (`make_array_from_callback` slices the host array; nothing is gathered)."""
    def one(x, sharding):
        x = np.asarray(x) if not isinstance(x, jax.Array) or not x.is_fully_addressable else x
        return jax.make_array_from_callback(np.shape(x), sharding, lambda idx: x[idx])
    return jax.tree.map(one, params, shardings)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assemble per-process numpy batches into global arrays split over the batch axes (works
    for one process, where it is a plain sharded device_put, and for many)."""
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        out[name] = jax.make_array_from_process_local_data(
            batch_sharding(mesh, value.ndim), value)
    return out


def batch_size_multiple(mesh: Mesh, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the batch axes (data × fsdp) and processes."""
    unit = math.lcm(_mesh_size(mesh, BATCH_AXES), jax.process_count())
    return -(-int(batch_size) // unit) * unit
