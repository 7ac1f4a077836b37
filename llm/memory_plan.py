"""Per-device memory plan of a training stage, printed before its first compile, and a clear
error when it cannot fit (never an XLA out-of-memory trace first).

    plan = plan_memory(model_config, mesh_shape={"data": 1, "fsdp": 8, "tensor": 1},
                       batch_per_device=4, seq_len=1024, reference_model=True, ...)
    print(plan.table())
    plan.check(device_memory_bytes(jax.devices()[0]))      # MemoryPlanError when it cannot fit

Every item is bytes on ONE device. Parameter-shaped items (parameters, gradients, optimizer
state, reference and reward models) come from the shapes alone (`jax.eval_shape`, nothing is
allocated): each leaf's bytes divided by the mesh axes `llm.sharding.LOGICAL_RULES` shard it
over (`logical_to_spec`, so a dimension that does not divide is replicated, as in a real run).
The optimizer state is `jax.eval_shape(optimizer.init, params)` of the real optax pipeline
(modeseek's AdamW keeps both moments in the parameters' dtype; `optax.MultiSteps` adds a
gradient accumulator), each moment sharded like its parameter.

Activations (B = rows per device, L = sequence length, D = embed, H/G = query/kv heads,
K = head_dim, F = mlp width, V = vocab, c = compute-dtype bytes; /t = divided by the tensor
axis when that dimension divides by it). Saved for the backward pass, per layer and token:

    none           c·(4D + (H+2G)K/t + HK/t + m·F/t) + (8 + c)·H·L/t
                   (block input, two norm outputs and the mid residual; q, k, v; the attention
                   output; m = 4 SwiGLU tensors (gate, up, silu(gate), product) or 2 GELU ones;
                   float32 scores and softmax and the softmax's compute-dtype copy — with fused
                   (flash) attention only a float32 log-sum-exp per head, 4·H/t)
    dots_saveable  c·(3D + (H+2G)K/t + HK/t + m'·F/t) + 4·H·L/t   (block input and the outputs
                   of every matmul: q/k/v, float32 scores, attention·v, o-proj, gate/up (m' = 2,
                   GELU 1), down-proj), plus, for the one layer being back-propagated, the rest
                   of its `none` set (norms, activations, probabilities), recomputed
    full           c·D (the block input only), plus one layer's `none` set recomputed

times num_layers · B · L, plus once the backward's transient float32 gradients of one layer's
probabilities and scores (2·4·H·L/t; none with fused attention). Outside the layers:
`LOGITS_COPIES` = 3 float32 [B, L, V/t] buffers (the logits and their gradient, 8 bytes per
token per vocabulary entry by XLA's slope in V on CPU since `modeseek.token_logprobs` gathers
x[y] − logsumexp(x) without a log-softmax buffer; plus one for the fused temporaries that small
vocabularies show; no remat applies to them, and for big vocabularies they dominate), and
c·3·D + L bytes per token (embedding output, final norm, the boolean attention mask). The
coefficients were checked against XLA's `compiled.memory_analysis()` on CPU
(tests/test_memory_plan.py): XLA's temp allocation of a float32 train step is 0.77–1.22 ×
(gradients + activations) over the 5 configurations tested (vocabularies 256–4096, the three
remat policies); the estimate errs high rather than low, and more so on GPUs, whose programs
fuse more elementwise work.

Phases: parameters, optimizer state, reference and reward models stay resident; the update
adds gradients + activations, generation adds the KV cache (they never run at once), so

    total = parameters + optimizer + reference + reward + max(gradients + activations, KV cache).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import optax

import modeseek
from llm import sharding as shd
from modeseek import decoder as dec

GiB = 1024**3
REMATS = ("none", "dots_saveable", "full")
LOGITS_COPIES = 3  # float32 [B, L, V] buffers of the loss head (see module docstring)
RESIDENT = ("parameters", "optimizer_state", "reference_model", "reward_model")
UPDATE = ("gradients", "activations")
GENERATION = ("kv_cache",)


class MemoryPlanError(RuntimeError):
    """The plan's total exceeds the device memory; the message names the biggest item and the
    configuration knob that shrinks it."""


def _axes_leaf(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(n, str | None) for n in x)


def _divisors(axes_tree, shapes_tree, mesh_shape: dict):
    """Tree of ints: how many devices each leaf is split over under LOGICAL_RULES."""
    mesh = types.SimpleNamespace(shape=dict(mesh_shape))

    def one(names, shaped):
        spec, _ = shd.logical_to_spec(names, shaped.shape, mesh)
        flat = [a for axes in spec if axes is not None
                for a in ((axes,) if isinstance(axes, str) else axes)]
        return math.prod(mesh_shape[a] for a in flat)
    return jax.tree.map(one, axes_tree, shapes_tree, is_leaf=_axes_leaf)


def _nbytes(shaped) -> int:
    return math.prod(shaped.shape) * jnp.dtype(shaped.dtype).itemsize


def sharded_bytes(axes_tree, shapes_tree, mesh_shape: dict) -> int:
    """Σ over leaves of bytes / (devices the leaf is split over): bytes on one device."""
    divisors = _divisors(axes_tree, shapes_tree, mesh_shape)
    return sum(_nbytes(s) // d for s, d in zip(jax.tree.leaves(shapes_tree),
                                               jax.tree.leaves(divisors), strict=True))


@functools.lru_cache(maxsize=16)
def model_shapes(config, *, with_head: bool = False):
    """(logical axes, ShapeDtypeStructs) of a decoder's params, or of a scalar model's (cached
    per config: read-only trees)."""
    init = dec.init_scalar_model if with_head else dec.init_params
    shapes = jax.eval_shape(functools.partial(init, config=config), jax.random.key(0))
    axes = dec.param_axes(config)
    if with_head:
        axes = {"decoder": axes, "head": dec.scalar_head_axes(config)}
    return axes, shapes


def optimizer_bytes(optimizer, axes_tree, shapes_tree, mesh_shape: dict) -> int:
    """Bytes on one device of `optimizer.init(params)`: moments split like their parameter,
    counters and other non-parameter leaves replicated."""
    state = jax.eval_shape(optimizer.init, shapes_tree)
    divisors = _divisors(axes_tree, shapes_tree, mesh_shape)
    per_leaf = optax.tree_map_params(optimizer, lambda s, d: _nbytes(s) // d, state, divisors,
                                     transform_non_params=_nbytes)
    return int(sum(jax.tree.leaves(per_leaf)))


def _tensor_div(size: int, tensor: int) -> int:
    return tensor if tensor > 1 and size % tensor == 0 else 1


def activation_bytes(config, *, batch: int, seq_len: int, remat: str, compute_bytes: int,
                     tensor: int = 1, fused_attention: bool = False,
                     value_head: bool = False, lm_logits: bool = True) -> dict[str, int]:
    """{"layers": ..., "logits": ..., "other": ...} bytes saved for the backward pass on one
    device (formulas in the module docstring)."""
    if remat not in REMATS:
        raise ValueError(f"remat must be one of {REMATS}, got {remat!r}")
    c, L = compute_bytes, seq_len
    D, K, F = config.embed_dim, config.head_dim, config.mlp_dim
    H = config.num_heads / _tensor_div(config.num_heads, tensor)
    G = config.num_kv_heads / _tensor_div(config.num_kv_heads, tensor)
    F_t = F / _tensor_div(F, tensor)
    V_t = config.vocab_size / _tensor_div(config.vocab_size, tensor)
    swiglu = config.mlp == "swiglu"
    scores = 4 * H if fused_attention else (8 + c) * H * L
    none = c * (4 * D + (H + 2 * G) * K + H * K + (4 if swiglu else 2) * F_t) + scores
    if remat == "none":
        per_layer_token, recompute = none, 0.0
    elif remat == "dots_saveable":
        dot_scores = 4 * H if fused_attention else 4 * H * L
        per_layer_token = c * (3 * D + (H + 2 * G) * K + H * K + (2 if swiglu else 1) * F_t)
        per_layer_token = per_layer_token + dot_scores
        recompute = none - per_layer_token  # what `none` would have saved beyond the dots
    else:
        per_layer_token, recompute = c * D, none
    # the backward of one layer also holds the float32 gradients of its probabilities and scores
    transient = 0.0 if fused_attention else 2 * 4 * H * L
    tokens = batch * L
    layers = tokens * (config.num_layers * per_layer_token + recompute + transient)
    logits = tokens * LOGITS_COPIES * 4 * V_t if lm_logits else 0
    other = tokens * (3 * D * c + L + (4 * D + 4 if value_head else 0))
    return {"layers": int(layers), "logits": int(logits), "other": int(other)}


def kv_cache_bytes(config, *, batch: int, length: int, mesh_shape: dict) -> int:
    """Bytes on one device of `decoder.init_cache(config, batch, length)` (global batch) split
    by `decoder.cache_axes` under LOGICAL_RULES."""
    shapes = jax.eval_shape(lambda: dec.init_cache(config, batch, length))
    return sharded_bytes(dec.cache_axes(config), shapes, mesh_shape)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Named per-device byte counts (see the module docstring for what each holds)."""

    parameters: int
    gradients: int
    optimizer_state: int
    reference_model: int
    reward_model: int
    activations: int
    kv_cache: int
    logits: int = 0  # part of `activations`: the float32 [B, L, V] buffers
    remat: str = "none"
    stage: str = ""
    batch_field: str = "batch_size"

    @property
    def peak_phase(self) -> str:
        return ("update" if self.gradients + self.activations >= self.kv_cache
                else "generation")

    @property
    def total(self) -> int:
        return (sum(getattr(self, k) for k in RESIDENT)
                + max(self.gradients + self.activations, self.kv_cache))

    def items(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in RESIDENT + UPDATE + GENERATION}

    def table(self, device_bytes: int | None = None) -> str:
        """A printable table: one row per item (GiB, or MiB below 1 GiB; share of the total;
        phase, "not at peak" for the phase that does not count), then the total."""
        unit, scale = ("GiB", GiB) if max(self.total, device_bytes or 0) >= GiB else ("MiB",
                                                                                    2**20)
        title = f"memory plan per device{f' ({self.stage})' if self.stage else ''}, " \
                f"remat={self.remat}"
        rows = [title, f"  {'item':<18}{unit:>10}{'share':>8}  phase"]
        for name, value in self.items().items():
            phase = ("resident" if name in RESIDENT else "update" if name in UPDATE
                     else "generation")
            if phase not in ("resident", self.peak_phase):
                phase += " (not at peak)"
            share = value / self.total if self.total else 0.0
            rows.append(f"  {name:<18}{value / scale:>10.3f}{share:>8.1%}  {phase}")
        if self.logits:
            rows.append(f"  {'(of which logits)':<18}{self.logits / scale:>10.3f}")
        limit = f" of {device_bytes / scale:.1f} {unit}" if device_bytes else ""
        rows.append(f"  {'total':<18}{self.total / scale:>10.3f}{'':>8}  "
                    f"resident + {self.peak_phase}{limit}")
        return "\n".join(rows)

    def _knob(self, item: str) -> str:
        stage = f"config.stages.{self.stage}" if self.stage else "the stage"
        shard = "raise mesh.fsdp (shards parameters, gradients and moments over more devices)"
        if item == "activations":
            first = ("lower" if self.remat == "full" else f"set remat='full' (now "
                     f"'{self.remat}') or lower")
            text = f"{first} {stage}.{self.batch_field} or raise mesh.data/mesh.fsdp"
            if self.logits > self.activations / 2:
                text += (f"; {self.logits / GiB:.1f} GiB of it are the float32 [B, L, V] "
                         "logits: raise mesh.tensor (splits the vocabulary)")
            return text
        return {
            "parameters": f"{shard} or use param_dtype='bfloat16'",
            "gradients": f"{shard} or use param_dtype='bfloat16'",
            "optimizer_state": shard,
            "reference_model": f"{shard}, or use an offline stage (cached reference log-probs)",
            "reward_model": f"{shard} or use a smaller reward trunk ({stage}.trunk_layers "
                            "of the reward-model stage)",
            "kv_cache": f"lower {stage}.prompts_per_iteration × samples_per_prompt or "
                        "max_new_tokens, or raise mesh.tensor (splits the kv heads)",
        }[item]

    def check(self, device_bytes: int | None) -> None:
        """Raise MemoryPlanError naming the biggest item and its knob when total > device_bytes
        (None: no limit known, e.g. on CPU; nothing is checked)."""
        if device_bytes is None or self.total <= device_bytes:
            return
        phase = UPDATE if self.peak_phase == "update" else GENERATION
        counted = {k: v for k, v in self.items().items() if k in RESIDENT + phase}
        biggest = max(counted, key=counted.get)
        raise MemoryPlanError(
            f"memory plan{f' of stage {self.stage}' if self.stage else ''}: "
            f"{self.total / GiB:.1f} GiB per device does not fit in "
            f"{device_bytes / GiB:.1f} GiB; biggest item: {biggest} "
            f"{counted[biggest] / GiB:.1f} GiB: {self._knob(biggest)}")


def plan_memory(model_config, *, mesh_shape: dict, batch_per_device: int, seq_len: int,
                param_dtype: str | None = None, compute_dtype: str | None = None,
                optimizer="adamw", reference_model: bool = False, reward_model_config=None,
                remat: str | None = None, sampler: tuple[int, int] | None = None,
                value_head: bool = False, lm_logits: bool = True,
                fused_attention: bool = False, stage: str = "",
                batch_field: str = "batch_size") -> MemoryPlan:
    """Per-device MemoryPlan of one stage's update (and generation, with `sampler`).

    Args:
      model_config: the policy's DecoderConfig (its `remat` field is read when `remat` is None;
        configs without one count as "none").
      mesh_shape: {"data": d, "fsdp": f, "tensor": t} sizes (no devices needed).
      batch_per_device: sequences per device in one gradient step (global / (data · fsdp)).
      seq_len: tokens per sequence in the update.
      param_dtype, compute_dtype: override the config's (e.g. "bfloat16").
      optimizer: "adamw" (modeseek.make_optimizer's clip → AdamW) or any optax transformation.
      reference_model: a frozen policy copy is resident (on-policy DPO / KL); False when the
        reference log-probs are cached (offline stages).
      reward_model_config: DecoderConfig of a resident scalar reward model, or None.
      sampler: (global batch, prompt_len + max_new_tokens) of the KV cache, or None.
      value_head: the trained model carries a scalar head (PPO value, reward model).
      lm_logits: the loss reads the [B, L, V] logits (False for a reward model's scores).
      fused_attention: the attention never stores [L, L] scores (cuDNN flash path).
    """
    if set(mesh_shape) != set(shd.MESH_AXES):
        raise ValueError(f"mesh_shape needs exactly the axes {shd.MESH_AXES}, got "
                         f"{sorted(mesh_shape)}")
    if batch_per_device < 1 or seq_len < 1:
        raise ValueError(f"batch_per_device={batch_per_device} and seq_len={seq_len} must be >= 1")
    remat = getattr(model_config, "remat", "none") if remat is None else remat
    config = model_config.replace(param_dtype=param_dtype or model_config.param_dtype,
                                  dtype=compute_dtype or model_config.dtype)
    axes, shapes = model_shapes(config, with_head=value_head)
    params = sharded_bytes(axes, shapes, mesh_shape)
    if optimizer == "adamw":
        optimizer = modeseek.make_optimizer(learning_rate=1.0, max_grad_norm=1.0)
    reward = 0
    if reward_model_config is not None:
        reward = sharded_bytes(*model_shapes(reward_model_config.replace(
            param_dtype=config.param_dtype, dtype=config.dtype), with_head=True), mesh_shape)
    reference = sharded_bytes(*model_shapes(config), mesh_shape) if reference_model else 0
    acts = activation_bytes(config, batch=batch_per_device, seq_len=seq_len, remat=remat,
                            compute_bytes=jnp.dtype(config.dtype).itemsize,
                            tensor=mesh_shape["tensor"], fused_attention=fused_attention,
                            value_head=value_head, lm_logits=lm_logits)
    kv = kv_cache_bytes(config, batch=sampler[0], length=sampler[1],
                        mesh_shape=mesh_shape) if sampler else 0
    return MemoryPlan(parameters=params, gradients=params,
                      optimizer_state=optimizer_bytes(optimizer, axes, shapes, mesh_shape),
                      reference_model=reference, reward_model=reward,
                      activations=sum(acts.values()), kv_cache=kv, logits=acts["logits"],
                      remat=remat, stage=stage, batch_field=batch_field)


def device_memory_bytes(device=None, default: int | None = None) -> int | None:
    """`memory_stats()["bytes_limit"]` of `device` (default: this process's first), else
    `default` (CPU devices report none). Only this process's devices can be asked."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else default
