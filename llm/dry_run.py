"""`--dry_run`: the mesh, the model's shapes and every stage's memory plan, without loading
or allocating a parameter.

    print(dry_run_report(cfg, jax.devices()))        # cfg: a configs/llm.py ConfigDict
    plan = stage_plan(cfg, stage_cfg, mesh_shape, base_config, platform="gpu")
    check_stage_fits(cfg, stage_cfg, mesh, base_config)  # prints; MemoryPlanError if too big

What each stage kind keeps on a device (global rows are divided over data × fsdp):
  sft           the policy; rows = batch_size, length = max_prompt_len + max_response_len;
  reward_model  a scalar model (decoder + head), no LM logits; rows = 2 · batch_size (chosen
                and rejected stacked);
  offline       the policy, reference log-probs cached (no reference model); rows = 2 · batch_size;
  onpolicy      the policy (+ value head for token-level algorithms), a frozen reference
                copy, the stage's reward model (if any); rows = minibatch_prompts ·
                samples_per_prompt, length = max_prompt_len + max_new_tokens; KV cache for
                prompts_per_iteration · samples_per_prompt sequences of that length.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from etils import epath

from llm import memory_plan as mp
from llm import runtime
from llm import sharding as shd
from modeseek import decoder as dec
from modeseek.taxonomy import get_algorithm


def model_config_only(name: str) -> dec.DecoderConfig:
    """The DecoderConfig of `config.model` from its metadata alone (no tensor is read)."""
    from llm import hf_layout
    from llm.byte_tokenizer import VOCAB_SIZE
    from llm.checkpoints import _read_config
    from llm.gguf_import import _hf_config, _reader, smollm2_path

    if name == "tiny":
        return dec.DecoderConfig.tiny(vocab_size=VOCAB_SIZE, max_len=1024)
    if name == "smollm2" or name.endswith(".gguf"):
        path = smollm2_path() if name == "smollm2" else name
        if not epath.Path(path).is_file():
            raise FileNotFoundError(f"config.model={name!r}: no such GGUF file")
        reader = _reader(path)  # memory-mapped: tensors are not read
        hf, _ = _hf_config({k: f.contents() for k, f in reader.fields.items()}, path)
        hf["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
        return hf_layout.config_from_hf(hf, source=path)
    if epath.Path(name).is_dir():
        return hf_layout.config_from_hf(_read_config(name),
                                        source=os.fspath(epath.Path(name) / "config.json"))
    raise FileNotFoundError(f"config.model={name!r}: not 'tiny', 'smollm2', a .gguf file or a "
                            "Hugging Face folder")


def stage_plan(cfg, stage_cfg, mesh_shape: dict, model_config: dec.DecoderConfig, *,
               platform: str = "cpu") -> mp.MemoryPlan:
    """The MemoryPlan of one stage (see the module docstring for what each kind keeps)."""
    from llm.models import stage_model_config
    from llm.models import with_run_dtypes as _with_dtypes

    config = _with_dtypes(stage_model_config(model_config, stage_cfg), cfg)
    split = mesh_shape["data"] * mesh_shape["fsdp"]
    kind, data = stage_cfg.kind, cfg.data
    pair_len = data.max_prompt_len + data.max_response_len
    fused = (platform == "gpu" and getattr(config, "attention", "") == "dot_product"
             and jnp.dtype(config.dtype).itemsize == 2)
    common = dict(mesh_shape=mesh_shape, fused_attention=fused, stage=stage_cfg.name,
                  remat=cfg.get("remat", None))  # None: the DecoderConfig's (or "none")
    if kind == "onpolicy":
        P, N = stage_cfg.prompts_per_iteration, stage_cfg.samples_per_prompt
        updates = stage_cfg.num_iterations * stage_cfg.reuse * (P // stage_cfg.minibatch_prompts)
        seq = data.max_prompt_len + stage_cfg.max_new_tokens
        reward = stage_cfg.get("reward_model", "")
        reward_config = (_with_dtypes(stage_model_config(model_config, cfg.stages[reward]), cfg)
                         if reward else None)
        return mp.plan_memory(
            config, batch_per_device=-(-stage_cfg.minibatch_prompts * N // split), seq_len=seq,
            optimizer=runtime.make_optimizer(stage_cfg, max(updates, 1)), reference_model=True,
            reward_model_config=reward_config, sampler=(P * N, seq),
            value_head=get_algorithm(stage_cfg.algorithm).token_level,
            batch_field="minibatch_prompts", **common)
    if kind not in ("sft", "reward_model", "offline"):
        raise ValueError(f"stage {stage_cfg.name}: unknown kind {kind!r}")
    rows = stage_cfg.batch_size * (1 if kind == "sft" else 2)
    return mp.plan_memory(
        config, batch_per_device=-(-rows // split), seq_len=pair_len,
        optimizer=runtime.make_optimizer(stage_cfg, max(stage_cfg.num_steps, 1)),
        value_head=kind == "reward_model", lm_logits=kind != "reward_model", **common)


def dry_run_report(config, devices, *, model_config: dec.DecoderConfig | None = None,
                   device_bytes: int | None = None) -> str:
    """Printable report: mesh, model shape and each stage's plan with a fits / does-not-fit
    verdict. `model_config` overrides reading `config.model`'s metadata; `device_bytes`
    overrides the devices' reported memory (CPU reports none: no verdict then)."""
    devices = list(devices)
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                         devices=devices)
    mesh_shape = {a: int(mesh.shape[a]) for a in shd.MESH_AXES}
    model_config = model_config or model_config_only(config.model)
    device_bytes = device_bytes or mp.device_memory_bytes(devices[0])
    platform = devices[0].platform
    lines = [f"dry run: {len(devices)} {platform} devices, mesh {mesh_shape}; model "
             f"{config.model}: {dec.num_params(model_config) / 1e6:,.1f}M parameters, "
             f"{model_config.num_layers} layers, vocab {model_config.vocab_size}"]
    for name in config.stage_order:
        plan = stage_plan(config, config.stages[name], mesh_shape, model_config,
                          platform=platform)
        lines.append(plan.table(device_bytes))
        try:
            plan.check(device_bytes)
            verdict = "fits" if device_bytes else "no device memory limit known: not checked"
        except mp.MemoryPlanError as e:
            verdict = f"DOES NOT FIT: {e}"
        lines.append(f"  -> {verdict}")
    return "\n".join(lines)


def check_stage_fits(cfg, stage_cfg, mesh, model_config, *,
                     device_bytes: int | None = None) -> mp.MemoryPlan:
    """Print the stage's plan (process 0) and raise MemoryPlanError when it cannot fit the
    first device's memory; call before the stage's first compile. `model_config` is the BASE
    model's (`llm.models.load_base(cfg.model)[0]`): stage trunks are applied here.
    `device_bytes` overrides the device's reported memory (CPU devices report none)."""
    mesh_shape = {a: int(mesh.shape[a]) for a in shd.MESH_AXES}
    # memory_stats() answers only for this process's devices (multi-host meshes)
    device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    plan = stage_plan(cfg, stage_cfg, mesh_shape, model_config, platform=device.platform)
    limit = device_bytes or mp.device_memory_bytes(device)
    if jax.process_index() == 0:
        print(plan.table(limit), flush=True)
    plan.check(limit)
    return plan
