"""The on-policy stage loop: per iteration, sample N responses to P prompts from the current
policy, score them in one pass (reward model + reference + sampling-time log-probs), then update
with reuse T over prompt minibatches (llm.rollout); PPO adds the value head, GAE and the
adaptive KL coefficient (llm.ppo).

Per-iteration metrics: time_generation / time_scoring / time_update (seconds, each phase
blocked on), tokens_per_s (real tokens in the rollout × (1 + reuse) / iteration time),
generation_tokens_per_s, update_mfu (NaN on CPU, which has no peak), the rollout's gold/proxy
reward, length and KL, and the update metrics averaged over the iteration's gradient steps.
Checkpoint steps count iterations.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

import modeseek
from llm import checkpointing, logs, models, ppo, rollout, steps
from llm import sharding as shd
from llm import state as st
from llm.data import make_loader
from llm.runtime import (
    NonFiniteError,
    Preemption,
    close_all,
    host_metrics,
    make_optimizer,
    step_boundary,
)


def _block(tree):
    return jax.block_until_ready(tree)


def run(cfg, stage_cfg, stage_dir, env, *, resume: bool) -> dict:
    mesh, config, tok = env.mesh, env.model_config, env.tokenizer
    algorithm = stage_cfg.algorithm
    is_ppo = algorithm == "ppo"
    if not modeseek.get_algorithm(algorithm).on_policy:
        raise ValueError(f"stage {stage_cfg.name}: {algorithm} is offline; use kind='offline'")
    P, N = stage_cfg.prompts_per_iteration, stage_cfg.samples_per_prompt
    reuse, minibatch = stage_cfg.reuse, stage_cfg.minibatch_prompts
    updates_per_iteration = reuse * (P // minibatch)
    optimizer = make_optimizer(stage_cfg, stage_cfg.num_iterations * updates_per_iteration)

    ref_params, _ = env.initial_params()
    params, param_sh = env.initial_params(with_head=is_ppo)
    if is_ppo:
        params["head"] = jax.tree.map(lambda x: x * 0, params["head"])
        loss_fn = ppo.make_ppo_loss(config, clip_eps=stage_cfg.hparams.clip_eps,
                                    vf_coef=stage_cfg.ppo.vf_coef)
    else:
        hparams = steps.objective_hparams(algorithm, stage_cfg.hparams)
        loss_fn = steps.make_onpolicy_loss(config, algorithm, hparams)
    reward_params = env.reward_params()
    reward_source = "model" if reward_params is not None else "gold"
    state_sh = st.state_shardings(optimizer, param_sh, params, mesh)
    state = st.init_state(params, optimizer, state_sh)

    pad_id = tok.pad_id if tok.pad_id is not None else 0
    generate = st.jit_eval(rollout.make_generate(
        config, samples_per_prompt=N, max_new_tokens=stage_cfg.max_new_tokens,
        temperature=stage_cfg.temperature, top_k=stage_cfg.top_k, top_p=stage_cfg.top_p,
        eos_id=tok.eos_id, pad_id=pad_id), mesh)
    score_fn = rollout.make_score(config, env.reward_config(), samples_per_prompt=N,
                                  reward_source=reward_source, recompute_old_logps=is_ppo)
    prompt_len = cfg.data.max_prompt_len

    def score_and_shape(policy, ref, reward, samples, kl_coef):
        data, extras = score_fn(policy["decoder"] if is_ppo else policy, ref, reward, samples)
        if is_ppo:
            data = ppo.add_advantages(data, {**extras, "prompt_len": prompt_len}, policy,
                                      config, kl_coef, gamma=stage_cfg.ppo.gamma,
                                      lam=stage_cfg.ppo.lam)
        return data, rollout.rollout_metrics(data)

    score = jax.jit(score_and_shape)
    train_step = modeseek.make_train_step(loss_fn, optimizer)
    update = jax.jit(rollout.make_update(train_step, reuse=reuse, minibatch_prompts=minibatch,
                                         samples_per_prompt=N),
                     out_shardings=(state_sh, shd.replicated(mesh)), donate_argnums=0)

    it, _ = make_loader(models.train_source(cfg, stage_cfg), tok,
                        batch_size=P // jax.process_count(),
                        max_prompt_len=prompt_len, prompts_only=True, shuffle=True,
                        seed=cfg.seed, use_chat_template=cfg.data.use_chat_template,
                        skip_bad_rows=cfg.data.skip_bad_rows, num_threads=1)
    rng = jax.random.key(cfg.seed)
    ckpt = checkpointing.RunCheckpointer(os.path.join(stage_dir, "checkpoints"),
                                         every=cfg.checkpoint_every)
    start, kl_coef = 0, float(stage_cfg.ppo.init_kl_coef if is_ppo else 0.0)
    if resume and ckpt.latest_step() is not None:
        state, rng, extra = ckpt.restore(state, rng, it)
        start, kl_coef = int(extra["iteration"]), float(extra["kl_coef"])
    logger = logs.MetricsLogger(stage_dir, resume_step=start if start else None,
                                use_wandb=cfg.get("wandb", False), config=cfg.to_dict())
    evaluate = env.make_evaluator("onpolicy") if cfg.eval.every else None
    peak = logs.peak_flops_per_device()
    preempt = Preemption()
    bar = logs.progress(stage_cfg.num_iterations, start, stage_cfg.name)
    status, metrics = "done", {}
    try:
        if start == 0 and evaluate is not None:
            logger.log(0, evaluate(state.params))
        for iteration in range(start, stage_cfg.num_iterations):
            key = jax.random.fold_in(rng, iteration)
            t0 = time.perf_counter()
            prompts = shd.global_batch(
                {k: v for k, v in next(it).items() if k in ("prompt_tokens", "prompt_mask")},
                mesh)
            policy = state.params["decoder"] if is_ppo else state.params
            samples = _block(generate(policy, prompts["prompt_tokens"], prompts["prompt_mask"],
                                      jax.random.fold_in(key, 0)))
            t1 = time.perf_counter()
            with st.mesh_context(mesh):
                data, roll_metrics = _block(score(state.params, ref_params, reward_params,
                                                  samples, kl_coef))
            t2 = time.perf_counter()
            with st.mesh_context(mesh):
                state, update_metrics = _block(update(state, data, jax.random.fold_in(key, 1)))
            t3 = time.perf_counter()
            raw = jax.device_get(update_metrics)
            for name in ("loss", "grad_norm"):
                bad = np.flatnonzero(~np.isfinite(raw[name]))
                if bad.size:
                    step = iteration * updates_per_iteration + int(bad[0]) + 1
                    raise NonFiniteError(f"non-finite {name} at gradient step {step} (iteration "
                                         f"{iteration + 1}); the last good checkpoint is kept")
            metrics = {**host_metrics(update_metrics), **host_metrics(roll_metrics)}
            real_tokens, seq_len = metrics["rollout/tokens"], data["tokens"].shape[1]
            response_tokens = metrics["rollout/response_tokens"]
            metrics.update(
                time_generation=t1 - t0, time_scoring=t2 - t1, time_update=t3 - t2,
                time_iteration=t3 - t0, kl_coef=kl_coef,
                tokens_per_s=real_tokens * (1 + reuse) / (t3 - t0),
                generation_tokens_per_s=response_tokens / (t1 - t0),
                update_mfu=logs.mfu(logs.update_flops(config, P * N * seq_len * reuse, seq_len),
                                    t3 - t2, peak))
            if is_ppo:
                kl_coef = ppo.adapt_kl_coef(kl_coef, metrics["rollout/kl_to_ref"],
                                            target=stage_cfg.ppo.kl_target,
                                            horizon=stage_cfg.ppo.kl_horizon,
                                            num_samples=P * N)
            last = iteration + 1 == stage_cfg.num_iterations
            if evaluate is not None and ((iteration + 1) % cfg.eval.every == 0 or last):
                metrics.update(evaluate(state.params))
            logger.log(iteration + 1, metrics)
            bar.update(1)
            bar.set_postfix(length=f"{metrics['rollout/length']:.1f}")
            if step_boundary(stage_cfg, ckpt, preempt, iteration + 1, state, rng, it,
                             {"iteration": iteration + 1, "kl_coef": kl_coef}):
                status = "preempted"
                break
    finally:
        close_all(preempt, bar, logger, ckpt)
    if status == "preempted":
        return {"status": status, "iteration": iteration + 1}
    return env.finish(stage_dir, state.params, metrics)
