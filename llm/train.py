"""One training stage on a device mesh: SFT, reward model, offline or on-policy preference FT.

    run_stage(cfg, stage_cfg, stage_dir, *, resume) -> summary dict

`cfg` is the experiment config (model, mesh, data, eval; see configs/llm.py) and `stage_cfg`
one entry of `cfg.stages`. Stage kinds:
  sft           token-mean NLL on the chosen responses;
  reward_model  Bradley–Terry on (chosen, rejected); held-out accuracy at every eval;
  offline       a taxonomy objective on the offline pairs (pref_ft, offline_dpo, offline_ipo,
                ...); reference log-probs computed once before training and cached in
                <workdir>/cache/<stage>.ref_logps.npz, keyed by what they were computed
                from (no reference model is kept);
  onpolicy      sample → score → update per iteration (`modeseek.engine`, llm.onpolicy).

Every kind runs in the one stage loop `llm.runtime.run_loop`, supplying its step function and
batches. The loop body is all jitted device work; the host reads only the step's scalar
metrics, which is also where NaN/inf is caught (`NonFiniteError` names the step; no checkpoint
is written after a bad step). A SIGTERM makes the loop save a checkpoint and return
"preempted"; with `resume=True` the stage continues from its latest checkpoint and
reproduces the uninterrupted run's metrics exactly on CPU.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from etils import epath

import modeseek
from llm import models, onpolicy, run_folder, steps
from llm import sharding as shd
from llm import state as st
from llm.data import make_loader
from llm.dry_run import check_stage_fits
from llm.runtime import make_optimizer, run_loop


def pair_loader(cfg, tokenizer, source, batch_size, *, shuffle, seed, num_epochs=None):
    per_process = batch_size // jax.process_count()
    it, stats = make_loader(source, tokenizer, batch_size=per_process,
                            max_prompt_len=cfg.data.max_prompt_len,
                            max_response_len=cfg.data.max_response_len, shuffle=shuffle,
                            seed=seed, num_epochs=num_epochs,
                            num_threads=1, **models.loader_options(cfg.data))
    if stats["rows_skipped"] and jax.process_index() == 0:
        print(f"{cfg.data.train}: skipped {stats['rows_skipped']} of "
              f"{stats['rows_checked']} rows: {stats['skipped_by_reason']}")
    return it, stats


def device_batch(batch: dict, mesh, keys) -> dict:
    return shd.global_batch({k: batch[k] for k in keys}, mesh)


PAIR_KEYS = steps.PAIR_KEYS


def reference_key(cfg, stage_cfg, stage_dir) -> str:
    """What a stage's reference log-probs are computed from: the data (file bytes, or the
    rows), the initial policy (the `init` stage's params, or the base model: its files' path,
    size and mtime, or its name and the seed for a random init), lengths, template and the
    fields that pick the rows."""
    data = models.train_source(cfg, stage_cfg)
    run_dir = run_folder.parent_dir(stage_dir)
    init = os.path.join(run_dir, stage_cfg.init, "params") if stage_cfg.init else cfg.model
    weights = (run_folder.fingerprint(files=[init], file_identity="stat")
               if epath.Path(init).exists() else None)
    return run_folder.fingerprint(
        files=[data] if isinstance(data, str) else (),
        fields={"rows": None if isinstance(data, str) else data, "model": cfg.model,
                "weights": weights, "init": stage_cfg.init, "seed": cfg.seed,
                "trunk_layers": stage_cfg.trunk_layers, "data": {
                    "max_prompt_len": cfg.data.max_prompt_len,
                    "max_response_len": cfg.data.max_response_len,
                    **models.loader_options(cfg.data)},
                "dtypes": [cfg.get("param_dtype", None), cfg.get("compute_dtype", None)]})


def reference_cache(cfg, stage_cfg, stage_dir, tokenizer, mesh, model_config, params) -> np.ndarray:
    """[rows, 2] reference log-probs of every training pair, computed once with the initial
    policy (`params`) and stored in <workdir>/cache/<stage>.ref_logps.npz keyed by
    `reference_key`: reused only when computed from the same inputs (a stale file, e.g. of
    other data, is recomputed with a warning), and outliving a deleted stage folder."""
    path = os.path.join(run_folder.parent_dir(stage_dir), "cache",
                        f"{stage_cfg.name}.ref_logps.npz")

    def compute():
        source = models.train_source(cfg, stage_cfg)
        batch_size = shd.batch_size_multiple(mesh, cfg.data.ref_batch_size)
        if not isinstance(source, str):  # a few rows: no batch larger than the data
            unit = shd.batch_size_multiple(mesh, 1)
            batch_size = max(unit, min(batch_size, len(source) // unit * unit))
        # two unshuffled epochs, ceil(rows / batch) batches: the last batch wraps around to
        # the first rows instead of dropping the remainder, so every row gets its value
        it, stats = pair_loader(cfg, tokenizer, source, batch_size,
                                shuffle=False, seed=0, num_epochs=2)
        num_batches = -(-stats["rows_in_shard"] // (batch_size // jax.process_count()))
        logps_fn = st.jit_eval(
            lambda p, b: (b["row_index"], steps.pair_logps(p, model_config, b)), mesh)
        cache = np.full((stats["rows_checked"], 2), np.nan, np.float32)
        for _ in range(num_batches):
            batch = next(it)
            rows, logps = jax.device_get(logps_fn(
                params, device_batch(batch, mesh, PAIR_KEYS + ("row_index",))))
            cache[rows] = logps
        return cache

    return run_folder.load_or_compute_cached(path, reference_key(cfg, stage_cfg, stage_dir),
                                             compute, write=jax.process_index() == 0)


def run_stage(cfg, stage_cfg, stage_dir: str, *, resume: bool = False,
              on_start=None) -> dict:
    """Runs (or resumes) one stage; returns its summary (also written to <stage>/summary.json).
    A finished stage (`run_folder.DONE_MARKER`) is skipped and its stored summary returned;
    a folder with outputs of an unfinished run needs `resume` (RunFolderError otherwise).
    `on_start(step)`: see `llm.runtime.run_loop`."""
    claim = run_folder.claim_stage_dir(stage_dir, resume=resume)
    if jax.process_count() > 1:  # every process claims before any of them writes there
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"claimed {stage_dir}")
    if claim == "skip":
        if jax.process_index() == 0:
            print(f"{stage_dir}: finished earlier; skipping it (its outputs are kept)",
                  flush=True)
        summary = (epath.Path(stage_dir) / "summary.json").read_text()
        return {**json.loads(summary), "skipped": True}
    mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    env = models.StageEnv.create(cfg, stage_cfg, stage_dir, mesh)
    check_stage_fits(cfg, stage_cfg, mesh, models.load_base(cfg.model)[0])
    if stage_cfg.kind == "onpolicy":
        return onpolicy.run(cfg, stage_cfg, stage_dir, env, resume=resume, on_start=on_start)
    return run_batches(cfg, stage_cfg, stage_dir, env, resume=resume, on_start=on_start)


def run_batches(cfg, stage_cfg, stage_dir, env, *, resume: bool, on_start=None) -> dict:
    """SFT, reward-model and offline preference stages: one batch per step in the stage loop."""
    mesh, model_config = env.mesh, env.model_config
    kind, num_steps = stage_cfg.kind, stage_cfg.num_steps
    optimizer = make_optimizer(stage_cfg, num_steps)
    params, param_sh = env.initial_params(with_head=kind == "reward_model")
    keys = PAIR_KEYS
    if kind == "sft":
        loss_fn = steps.make_sft_loss(model_config)
    elif kind == "reward_model":
        loss_fn = steps.make_reward_model_loss(model_config)
    elif kind == "offline":
        if modeseek.get_algorithm(stage_cfg.algorithm).on_policy:
            raise ValueError(f"stage {stage_cfg.name}: {stage_cfg.algorithm} is on-policy; use "
                             "kind='onpolicy'")
        hparams = modeseek.resolve_hparams(stage_cfg.hparams,
                                           where=f"stages.{stage_cfg.name}.hparams")
        loss_fn = steps.make_offline_loss(model_config, stage_cfg.algorithm, hparams)
        ref_cache = reference_cache(cfg, stage_cfg, stage_dir, env.tokenizer, mesh, model_config,
                                    params)
        keys = PAIR_KEYS + ("ref_logps",)
    else:
        raise ValueError(f"unknown stage kind {kind!r}: sft | reward_model | offline | onpolicy")
    state_sh = st.state_shardings(optimizer, param_sh, params, mesh)
    state = st.init_state(params, optimizer, state_sh)
    train_step = st.jit_train_step(modeseek.make_train_step(loss_fn, optimizer), state_sh, mesh)
    it, _ = pair_loader(cfg, env.tokenizer, models.train_source(cfg, stage_cfg),
                        stage_cfg.batch_size, shuffle=True, seed=cfg.seed)

    def step_fn(state, key, step, extra):
        del step
        t0 = time.perf_counter()
        batch = next(it)
        if kind == "offline":
            batch = dict(batch, ref_logps=ref_cache[batch["row_index"]])
        state, metrics = jax.block_until_ready(
            train_step(state, device_batch(batch, mesh, keys), key))
        seconds = time.perf_counter() - t0
        tokens = int(np.sum(batch["prompt_mask"]) + np.sum(batch["chosen_mask"])
                     + (np.sum(batch["rejected_mask"]) if kind != "sft" else 0))
        return state, metrics, {"time_update": seconds,
                                "tokens_per_s": tokens * jax.process_count() / seconds}, extra

    evaluate = env.make_evaluator(kind) if cfg.eval.every else None
    return run_loop(cfg, stage_cfg, stage_dir, env, state=state, step_fn=step_fn,
                    num_steps=num_steps, iterator=it, evaluate=evaluate, resume=resume,
                    on_start=on_start)
