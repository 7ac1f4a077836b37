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

One program (stage field `fuse_iteration`, default off): sampling, scoring and the update
compile into one jitted program (`modeseek.make_iteration`) with no host round-trip between
them — for device rewards only (a host reward is a ConfigError) and without trimming (fixed
shapes: `trim_responses` must be off). Same keys, so it gives the phase-by-phase iteration's
samples and metrics. On CPU it measured 0.90–1.09× the phase-by-phase loop (SmolLM2 and the
tiny model alike: the host reads between phases are a few scalars); it is meant for
accelerators, where a host read drains the device queue, and has not yet run on one.

Per-iteration metrics: time_iteration; phase by phase also time_generation / time_scoring /
time_update (seconds, each phase blocked on; time_scoring includes host rewards,
time_reward_host alone), generation_tokens_per_s and update_mfu (NaN on CPU, which has no
peak); tokens_per_s (real tokens in the rollout × (1 + reuse) / iteration time),
rollout/sequence_length (prompt + scored response width), rollout/proxy_reward,
rollout/gold/<name> per gold reward and rollout/gold_reward (the first gold), length and KL,
kl_coef (token-level), and the update metrics averaged over the iteration's gradient steps.
Checkpoint steps count iterations.
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

    def score_fn(params, samples, ref_params, reward_params, kl_coef, host_scores):
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
        metrics["rollout/sequence_length"] = jnp.float32(rollout.tokens.shape[-1])
        return rollout, metrics, scores

    loss_fn = modeseek.make_rollout_loss(alg.name, policy, sampling, hparams)
    update_fn = modeseek.make_update(modeseek.make_train_step(loss_fn, optimizer), reuse=reuse,
                                     minibatch_prompts=minibatch)
    check_rewards = lambda scores: reward_pass.check_all(rewards, scores, (P, N))
    if stage_cfg.get("fuse_iteration", False):
        if host_rewards:
            raise config_checks.ConfigError(
                f"config.stages.{stage_cfg.name}.fuse_iteration: the rewards "
                f"{sorted(r.name for r in host_rewards.values())} read decoded text on the "
                "host, which one compiled iteration cannot call; set fuse_iteration=False")
        iterate = one_program(policy, sampling, N, score_fn, update_fn, state_sh, mesh,
                              check_rewards)
    else:
        iterate = three_programs(policy, sampling, N, score_fn, update_fn, state_sh, mesh,
                                 check_rewards, host_rewards, trim=stage_cfg.trim_responses)

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
        state, out, timing = iterate(state, prompts, key, ref_params, reward_params, kl_coef)
        seconds = time.perf_counter() - t0
        more = host_metrics(out["rollout"])
        if not alg.token_level:  # pairwise / group objectives learn nothing without a pair
            starvation.update(more["rollout/pairs"], iteration + 1)
        if first_gold is not None:
            more["rollout/gold_reward"] = more[f"rollout/gold/{first_gold}"]
        more.update(timing, time_iteration=seconds,
                    tokens_per_s=more["rollout/tokens"] * (1 + reuse) / seconds)
        if "time_generation" in timing:  # phase by phase
            seq_len = int(more["rollout/sequence_length"])
            more.update(generation_tokens_per_s=more["rollout/response_tokens"]
                        / timing["time_generation"],
                        update_mfu=logs.mfu(logs.update_flops(
                            config, P * N * seq_len * reuse, seq_len), timing["time_update"],
                            peak))
        if alg.token_level:
            more["kl_coef"] = kl_coef
            kl_coef = float(modeseek.adaptive_kl_coef(
                kl_coef, more["rollout/kl_to_ref"], kl_target=hparams["kl_target"],
                kl_horizon=hparams["kl_horizon"], num_samples=P * N))
        return state, out["update"], more, {"kl_coef": kl_coef}

    evaluate = env.make_evaluator("onpolicy") if cfg.eval.every else None
    return run_loop(cfg, stage_cfg, stage_dir, env, state=state, step_fn=step_fn,
                    num_steps=stage_cfg.num_iterations, iterator=it, evaluate=evaluate,
                    resume=resume, extra={"kl_coef": float(hparams["kl_coef"])},
                    bar_metric="rollout/length", on_start=on_start)


def three_programs(policy, sampling, N, score_fn, update_fn, state_sh, mesh, check_rewards,
                   host_rewards, *, trim: bool):
    """iterate(state, prompts, key, ref_params, reward_params, kl_coef) -> (state, outputs,
    timing): sampling, scoring and the update as three jitted programs, each blocked on and
    timed; host rewards read the samples, and responses are trimmed, between them. Bad rewards
    stop the run before the update."""
    generate = st.jit_eval(
        lambda p, tokens, mask, key: modeseek.generate(
            key, policy, p, tokens, mask, sampling=sampling, samples_per_prompt=N), mesh)
    score = st.jit_sharded(score_fn, mesh)
    update = st.jit_train_step(update_fn, state_sh, mesh)

    def iterate(state, prompts, key, ref_params, reward_params, kl_coef):
        t0 = time.perf_counter()
        samples = jax.block_until_ready(generate(state.params, prompts["prompt_tokens"],
                                                 prompts["prompt_mask"],
                                                 jax.random.fold_in(key, 0)))
        if trim:  # score and update only up to the longest response
            samples = modeseek.trim_responses(samples, modeseek.response_bucket(samples))
        t1 = time.perf_counter()
        P = prompts["prompt_tokens"].shape[0]
        host_scores, reward_seconds = reward_pass.host_scores(host_rewards, samples, (P, N))
        rollout, roll_metrics, scores = jax.block_until_ready(
            score(state.params, samples, ref_params, reward_params, kl_coef, host_scores))
        check_rewards(scores)
        t2 = time.perf_counter()
        state, update_metrics = jax.block_until_ready(
            update(state, rollout, jax.random.fold_in(key, 1)))
        t3 = time.perf_counter()
        return state, {"update": update_metrics, "rollout": roll_metrics}, {
            "time_generation": t1 - t0, "time_scoring": t2 - t1, "time_update": t3 - t2,
            "time_reward_host": reward_seconds}

    return iterate


def one_program(policy, sampling, N, score_fn, update_fn, state_sh, mesh, check_rewards):
    """The same `iterate` as one jitted program (`modeseek.make_iteration`): no host round-trip
    between the phases, untrimmed responses, device rewards only; non-finite rewards leave the
    state untrained and stop the run. Timing: the iteration's wall time only."""
    iteration = modeseek.make_iteration(
        policy, sampling, samples_per_prompt=N, update=update_fn,
        score=lambda params, samples, ref_params, reward_params, kl_coef: score_fn(
            params, samples, ref_params, reward_params, kl_coef, {}))
    step = st.jit_train_step(iteration, state_sh, mesh)

    def iterate(state, prompts, key, ref_params, reward_params, kl_coef):
        state, out = step(state, prompts["prompt_tokens"], prompts["prompt_mask"], key,
                          ref_params, reward_params, kl_coef)
        check_rewards(out["scores"])
        return state, out, {}

    return iterate
