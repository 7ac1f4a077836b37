"""The on-policy stage: `modeseek.engine`'s iteration (sample N responses to P prompts from the
current policy → one scoring pass → update with reuse T over prompt minibatches) inside the
one stage loop (`llm.runtime.run_loop`). Token-level algorithms (a taxonomy record with a
token objective: PPO) get a value head on the policy trunk and the adaptive KL controller;
nothing here reads an algorithm's name.

Rewards (`llm.reward_pass`): the proxy (`StageEnv.rewards`) trains; every gold reward is only
logged. Device rewards run inside the jitted scoring pass, host rewards (decoded text, user
functions) just before it; bad scores stop the run naming the reward.

Pairs: rollout/pairs counts the sample pairs of a prompt (both valid) with different proxy
rewards, rollout/groups the prompts with at least one (`config_checks.count_pairs`); a
pairwise / group algorithm stops with ConfigError after `max_zero_pair_iterations` (stage
field, default 3, 0 = never) consecutive iterations without a pair.

Response trimming (stage field `trim_responses`, default on): after sampling, the response
axis is cut to the smallest power of two ≥ 16 holding every response (`modeseek.response_bucket`),
so scoring and the update skip the padding of early-stopped samples; each bucket compiles once.

Per-iteration metrics: time_generation / time_scoring / time_update (seconds, each phase
blocked on; time_scoring includes host rewards, time_reward_host alone), tokens_per_s (real
tokens in the rollout × (1 + reuse) / iteration time), generation_tokens_per_s, update_mfu
(NaN on CPU, which has no peak), rollout/proxy_reward, rollout/gold/<name> per gold reward and
rollout/gold_reward (the first gold), length and KL, kl_coef (token-level), and the update
metrics averaged over the iteration's gradient steps. Checkpoint steps count iterations.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import modeseek
from llm import config_checks, logs, models, reward_pass
from llm import sharding as shd
from llm import state as st
from llm.data import make_loader
from llm.runtime import host_metrics, make_optimizer, run_loop


def run(cfg, stage_cfg, stage_dir, env, *, resume: bool, on_start=None) -> dict:
    mesh, config, tok = env.mesh, env.model_config, env.tokenizer
    alg = modeseek.get_algorithm(stage_cfg.algorithm)
    if not alg.on_policy:
        raise ValueError(f"stage {stage_cfg.name}: {alg.name} is offline; use kind='offline'")
    hparams = modeseek.resolve_hparams(stage_cfg.hparams,
                                       where=f"stages.{stage_cfg.name}.hparams")
    P, N = stage_cfg.prompts_per_iteration, stage_cfg.samples_per_prompt
    reuse, minibatch = stage_cfg.reuse, stage_cfg.minibatch_prompts
    updates_per_iteration = reuse * (P // minibatch)
    optimizer = make_optimizer(stage_cfg, stage_cfg.num_iterations * updates_per_iteration)
    policy = modeseek.PolicyModel(config, value="shared" if alg.token_level else "none")
    sampling = modeseek.Sampling(
        max_new_tokens=stage_cfg.max_new_tokens, temperature=stage_cfg.temperature,
        top_k=stage_cfg.top_k, top_p=stage_cfg.top_p, eos_ids=env.eos_ids, pad_id=env.pad_id)

    ref_params, _ = env.initial_params()
    params, param_sh = env.initial_params(with_head=alg.token_level)
    if alg.token_level:  # V ≡ 0 at the start (PolicyModel "shared")
        params["head"] = jax.tree.map(jnp.zeros_like, params["head"])
    proxy, golds = env.rewards()
    rewards = reward_pass.labelled(proxy, golds)
    device_rewards, host_rewards = reward_pass.split(rewards)
    reward_params = reward_pass.device_params(device_rewards)
    first_gold = next(iter(golds), None)
    state_sh = st.state_shardings(optimizer, param_sh, params, mesh)
    state = st.init_state(params, optimizer, state_sh)

    generate = st.jit_eval(
        lambda p, tokens, mask, key: modeseek.generate(
            key, policy, p, tokens, mask, sampling=sampling, samples_per_prompt=N), mesh)

    def score_fn(params, ref_params, reward_params, host_scores, samples, kl_coef):
        scores = {**host_scores, **reward_pass.device_scores(device_rewards, reward_params,
                                                             samples, (P, N))}
        rollout = modeseek.score_rollout(policy, params, ref_params, samples,
                                         scores[reward_pass.PROXY])
        if alg.token_level:
            rollout, _ = modeseek.add_ppo_targets(rollout, hparams, kl_coef)
        metrics = modeseek.rollout_metrics(rollout)
        metrics["rollout/pairs"], metrics["rollout/groups"] = config_checks.count_pairs(
            scores[reward_pass.PROXY], rollout.valid)
        for label, values in scores.items():
            if label != reward_pass.PROXY:
                metrics[f"rollout/{label}"] = modeseek.masked_mean(values, rollout.valid)
        return rollout, metrics, scores

    score = st.jit_sharded(score_fn, mesh)
    loss_fn = modeseek.make_rollout_loss(alg.name, policy, sampling, hparams)
    update = st.jit_train_step(
        modeseek.make_update(modeseek.make_train_step(loss_fn, optimizer), reuse=reuse,
                             minibatch_prompts=minibatch), state_sh, mesh)

    it, _ = make_loader(models.train_source(cfg, stage_cfg), tok,
                        batch_size=P // jax.process_count(),
                        max_prompt_len=cfg.data.max_prompt_len, prompts_only=True, shuffle=True,
                        seed=cfg.seed, num_threads=1, **models.loader_options(cfg.data))
    peak = logs.peak_flops_per_device()
    starvation = config_checks.PairStarvation(stage_cfg.max_zero_pair_iterations)

    def step_fn(state, key, iteration, extra):
        kl_coef = extra["kl_coef"]
        t0 = time.perf_counter()
        prompts = shd.global_batch({k: v for k, v in next(it).items()
                                    if k in ("prompt_tokens", "prompt_mask")}, mesh)
        samples = jax.block_until_ready(generate(state.params, prompts["prompt_tokens"],
                                                 prompts["prompt_mask"],
                                                 jax.random.fold_in(key, 0)))
        if stage_cfg.trim_responses:  # score and update only up to the longest response
            samples = modeseek.trim_responses(samples, modeseek.response_bucket(samples))
        t1 = time.perf_counter()
        host_scores, reward_seconds = reward_pass.host_scores(host_rewards, samples, (P, N))
        rollout, roll_metrics, scores = jax.block_until_ready(
            score(state.params, ref_params, reward_params, host_scores, samples, kl_coef))
        reward_pass.check_all(rewards, scores, (P, N))  # bad rewards stop before the update
        t2 = time.perf_counter()
        state, update_metrics = jax.block_until_ready(
            update(state, rollout, jax.random.fold_in(key, 1)))
        t3 = time.perf_counter()
        more = host_metrics(roll_metrics)
        if not alg.token_level:  # pairwise / group objectives learn nothing without a pair
            starvation.update(more["rollout/pairs"], iteration + 1)
        if first_gold is not None:
            more["rollout/gold_reward"] = more[f"rollout/gold/{first_gold}"]
        seq_len = rollout.tokens.shape[-1]
        more.update(
            time_generation=t1 - t0, time_scoring=t2 - t1, time_update=t3 - t2,
            time_iteration=t3 - t0, time_reward_host=reward_seconds,
            tokens_per_s=more["rollout/tokens"] * (1 + reuse) / (t3 - t0),
            generation_tokens_per_s=more["rollout/response_tokens"] / (t1 - t0),
            update_mfu=logs.mfu(logs.update_flops(config, P * N * seq_len * reuse, seq_len),
                                t3 - t2, peak))
        if alg.token_level:
            more["kl_coef"] = kl_coef
            kl_coef = float(modeseek.adaptive_kl_coef(
                kl_coef, more["rollout/kl_to_ref"], kl_target=hparams["kl_target"],
                kl_horizon=hparams["kl_horizon"], num_samples=P * N))
        return state, update_metrics, more, {"kl_coef": kl_coef}

    evaluate = env.make_evaluator("onpolicy") if cfg.eval.every else None
    return run_loop(cfg, stage_cfg, stage_dir, env, state=state, step_fn=step_fn,
                    num_steps=stage_cfg.num_iterations, iterator=it, evaluate=evaluate,
                    resume=resume, extra={"kl_coef": float(hparams["kl_coef"])},
                    bar_metric="rollout/length", on_start=on_start)
