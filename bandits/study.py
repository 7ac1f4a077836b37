"""The bandit study: a table of runs, grouped into a few compiled programs.

`plan_runs(config)` turns the config into run records (one per seed × reward × algorithm ×
ablation value) and the static `BanditSetup` of each group; `run_study` executes each group as
`jax.jit(jax.vmap(train))` over fixed-size chunks of runs (the last chunk is padded, so every
group compiles exactly once) and returns the records with summary numbers plus the curves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

import modeseek
from bandits import env
from bandits.train import BanditSetup, make_train

CURVES = ("expected_reward", "kl_policy_ref", "kl_ref_policy", "entropy", "peak_mass",
          "kl_policy_opt", "kl_opt_policy", "logratio/chosen", "logratio/rejected", "num_pairs",
          "loss", "grad_norm", "reward_queries")


def validate(config):
    """Fail before any compilation on bad values, naming the field."""
    known_rewards = set(env.REWARDS)
    for name in config.rewards:
        if name not in known_rewards:
            raise ValueError(f"config.rewards: unknown reward {name!r}; known: "
                             f"{', '.join(env.REWARDS)}")
    for group in ("onpolicy", "offline"):
        for name in config[group].algorithms:
            alg = modeseek.get_algorithm(name)
            if alg.on_policy != (group == "onpolicy"):
                raise ValueError(f"config.{group}.algorithms: {name} is "
                                 f"{'on-policy' if alg.on_policy else 'offline'}")
            if config.learning_rates.get(name) is None:
                raise ValueError(f"config.learning_rates.{name} is missing")
    for name, lr in config.learning_rates.items():
        if not lr > 0:
            raise ValueError(f"config.learning_rates.{name} must be > 0, got {lr}")
    for name in ("beta", "tau", "rwr_beta", "clip_eps"):
        if not config.hparams[name] > 0:
            raise ValueError(f"config.hparams.{name} must be > 0, got {config.hparams[name]}")
    if config.seeds < 1:
        raise ValueError(f"config.seeds must be >= 1, got {config.seeds}")
    for abl in ("reuse_ablation", "batch_ablation"):
        for name in config[abl].algorithms:
            if not modeseek.get_algorithm(name).on_policy:
                raise ValueError(f"config.{abl}.algorithms: {name} is not on-policy")
        if config[abl].reward not in known_rewards:
            raise ValueError(f"config.{abl}.reward: unknown reward {config[abl].reward!r}")
    if any(t < 1 for t in config.reuse_ablation.grid):
        raise ValueError(f"config.reuse_ablation.grid: reuse T must be >= 1, got "
                         f"{tuple(config.reuse_ablation.grid)}")
    m = config.onpolicy.minibatch_prompts
    if any(b % m or b < m for b in config.batch_ablation.grid):
        raise ValueError(f"config.batch_ablation.grid must be multiples of "
                         f"config.onpolicy.minibatch_prompts ({m})")


def _hparams(config, algorithm):
    hp = dict(config.hparams)
    hp.update(config.overrides.get(algorithm, {}))
    return hp


def plan_runs(config):
    """Return {group: (BanditSetup, [run records])} for the whole study."""
    validate(config)
    common = dict(policy=config.policy, reference=config.reference,
                  samples_per_prompt=config.samples_per_prompt,
                  eval_prompts=config.eval_prompts, pi_star_beta=config.pi_star_beta)
    on, off = config.onpolicy, config.offline
    ablation_algs = tuple(config.reuse_ablation.algorithms)
    on_algs = tuple(on.algorithms) + tuple(a for a in ablation_algs if a not in on.algorithms)
    setups = {
        "onpolicy": BanditSetup(algorithms=on_algs, num_steps=on.num_steps,
                                max_prompts_per_batch=on.prompts_per_batch,
                                minibatch_prompts=on.minibatch_prompts, **common),
        "offline": BanditSetup(algorithms=tuple(off.algorithms), num_steps=off.num_steps,
                               max_prompts_per_batch=off.prompts, minibatch_prompts=off.prompts,
                               **dict(common, eval_prompts=off.eval_prompts)),
        "batch_ablation": BanditSetup(
            algorithms=tuple(config.batch_ablation.algorithms), num_steps=on.num_steps,
            max_prompts_per_batch=max(config.batch_ablation.grid),
            minibatch_prompts=on.minibatch_prompts, **common),
    }
    runs = {group: [] for group in setups}

    def add(group, algorithm, reward, seed, *, reuse, prompts_per_batch, study):
        alg = modeseek.get_algorithm(algorithm)
        runs[group].append(dict(
            group=group, study=study, algorithm=algorithm, reward=reward, seed=seed,
            regime="on-policy" if alg.on_policy else "offline",
            on_policy=alg.on_policy, negative_gradient=alg.negative_gradient, reuse=reuse,
            prompts_per_batch=prompts_per_batch, learning_rate=config.learning_rates[algorithm],
            hparams=_hparams(config, algorithm)))

    for reward in config.rewards:
        for seed in range(config.seeds):
            for a in on.algorithms:
                add("onpolicy", a, reward, seed, reuse=modeseek.get_algorithm(a).reuse,
                    prompts_per_batch=on.prompts_per_batch, study="main")
            for a in off.algorithms:
                add("offline", a, reward, seed, reuse=1, prompts_per_batch=off.prompts,
                    study="main")
    abl = config.reuse_ablation
    for seed in range(abl.seeds):
        for a in abl.algorithms:
            for t in abl.grid:
                add("onpolicy", a, abl.reward, seed, reuse=t,
                    prompts_per_batch=on.prompts_per_batch, study="reuse")
    abl = config.batch_ablation
    for seed in range(abl.seeds):
        for a in abl.algorithms:
            for b in abl.grid:
                add("batch_ablation", a, abl.reward, seed, reuse=1, prompts_per_batch=b,
                    study="batch")
    return {g: (setups[g], runs[g]) for g in setups if runs[g]}


def _knobs(setup, runs):
    index = {name: i for i, name in enumerate(setup.algorithms)}
    knobs = {name: np.array([r["hparams"][name] for r in runs], np.float32)
             for name in runs[0]["hparams"]}
    knobs["learning_rate"] = np.array([r["learning_rate"] for r in runs], np.float32)
    knobs["algorithm"] = np.array([index[r["algorithm"]] for r in runs], np.int32)
    knobs["reuse"] = np.array([r["reuse"] for r in runs], np.int32)
    knobs["prompts_per_batch"] = np.array([r["prompts_per_batch"] for r in runs], np.int32)
    keys = jax.vmap(jax.random.key)(jnp.array([r["seed"] for r in runs]))
    rewards = np.stack([env.reward_table(r["reward"]) for r in runs]).astype(np.float32)
    return keys, rewards, knobs


def run_group(setup: BanditSetup, runs, *, chunk_size=48, progress=None):
    """Run every record of one group; returns (curves {name: [R, S]}, all outputs {name: [R,
    ...]}, timings {compile_s, run_s})."""
    train = jax.jit(jax.vmap(make_train(setup)))
    size = min(chunk_size, len(runs))
    num_chunks = -(-len(runs) // size)
    padded = runs + [runs[-1]] * (num_chunks * size - len(runs))
    outputs, compile_s, run_s = [], 0.0, 0.0
    compiled = None
    for c in range(num_chunks):
        args = _knobs(setup, padded[c * size:(c + 1) * size])
        if compiled is None:
            t0 = time.perf_counter()
            compiled = train.lower(*args).compile()
            compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = jax.device_get(compiled(*args))
        run_s += time.perf_counter() - t0
        outputs.append(out)
        if progress is not None:
            progress.update(min(size, len(runs) - c * size))
    cat = {k: np.concatenate([o[k] for o in outputs])[:len(runs)] for k in outputs[0]}
    curves = {k: cat[k] for k in CURVES}
    return curves, cat, {"compile_s": compile_s, "run_s": run_s}


def steps_to_threshold(curve, threshold):
    """First gradient step (1-based) whose expected reward reaches `threshold`, else None."""
    hits = np.nonzero(curve >= threshold)[0]
    return int(hits[0]) + 1 if hits.size else None


def summarise(record, curves, i, outputs):
    max_reward = float(env.reward_table(record["reward"]).max())
    er = curves["expected_reward"][i]
    record.update(
        final_expected_reward=float(er[-1]),
        **{"steps_to_0.9_of_max": steps_to_threshold(er, 0.9 * max_reward)},
        final_kl_policy_ref=float(curves["kl_policy_ref"][i, -1]),
        final_kl_ref_policy=float(curves["kl_ref_policy"][i, -1]),
        final_entropy=float(curves["entropy"][i, -1]),
        final_peak_mass=float(curves["peak_mass"][i, -1]),
        reward_queries=int(curves["reward_queries"][i, -1]),
        final_reward_prompt_std=float(outputs["final_reward_prompt_std"][i]),
        final_probs=[round(float(p), 6) for p in outputs["final_probs"][i]],
    )
    return record


def run_study(config, *, show_progress=True):
    """Run the whole study. Returns (records, curves {group: {name: [R, S]}}, timings)."""
    plan = plan_runs(config)
    total = sum(len(runs) for _, runs in plan.values())
    records, curves, timings = [], {}, {}
    with tqdm.tqdm(total=total, desc="bandit runs", unit="run",
                   disable=not show_progress) as bar:
        for group, (setup, runs) in plan.items():
            group_curves, outputs, timing = run_group(
                setup, runs, chunk_size=config.chunk_size, progress=bar)
            curves[group] = group_curves
            timings[group] = dict(timing, runs=len(runs), steps=setup.num_steps,
                                  setup=dataclasses.asdict(setup))
            for i, record in enumerate(runs):
                record["curve_index"] = i
                records.append(summarise(record, group_curves, i, outputs))
    return records, curves, timings


def save(out, records, curves, timings):
    """results.json (one record per run, summary numbers) and metrics.npz (the curves, keyed
    "<group>/<metric>", rows indexed by each record's `curve_index`)."""
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"runs": records, "timings": timings}, f, indent=1)
    np.savez_compressed(os.path.join(out, "metrics.npz"),
                        **{f"{g}/{k}": v for g, c in curves.items() for k, v in c.items()})
