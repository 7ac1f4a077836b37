"""The bandit study: a table of runs, executed by ONE compiled program.

`plan_main(config)` turns the config into run records (reward × method × learning rate × seed);
`best_learning_rates` picks each method's step size on the held-out selection seeds;
`plan_ablations(config, best)` adds the reuse and batch-size ablations at those step sizes.
`run_table` executes records as `jax.jit(jax.vmap(train))` over fixed-size chunks of runs (the
last chunk padded, so the program compiles once), with the run axis split over the host's
devices; the SFT initialisation is computed once per seed. A run's numbers depend only on its
record, never on its chunk or device (tests/test_bandits_study.py checks 1 vs 2 devices).
"""

from __future__ import annotations

import concurrent.futures
import difflib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import modeseek
from bandits import env, measures
from bandits.train import BanditSetup, make_init, make_train

CURVES = ("expected_reward", "kl_policy_ref", "kl_ref_policy", "entropy", "peak_mass",
          "kl_policy_opt", "kl_opt_policy", "logratio/chosen", "logratio/rejected", "num_pairs",
          "loss", "grad_norm", "reward_queries")


def _fail(field, message):
    raise ValueError(f"config.{field}: {message}")


def _positive_int(config, field):
    value = config[field] if "." not in field else config[field.split(".")[0]][
        field.split(".")[1]]
    if not isinstance(value, int) or value < 1:
        _fail(field, f"must be an integer >= 1, got {value!r}")


def validate(config):
    """Fail before any compilation on bad values, naming the field."""
    for field in ("selection_seeds", "verdict_seeds", "num_steps", "eval_every",
                  "eval_prompts", "samples_per_prompt", "minibatch_prompts", "onpolicy_prompts",
                  "offline_prompts", "chunk_size"):
        _positive_int(config, field)
    if config.samples_per_prompt < 2:
        _fail("samples_per_prompt", f"must be >= 2 to form pairs, got {config.samples_per_prompt}")
    if config.num_steps % config.eval_every:
        _fail("eval_every", f"must divide num_steps ({config.num_steps}), got {config.eval_every}")
    if not isinstance(config.devices, int) or config.devices < 0:
        _fail("devices", f"must be an integer >= 0 (0: all), got {config.devices!r}")
    if config.policy not in ("mlp", "tabular"):
        _fail("policy", f"must be 'mlp' or 'tabular', got {config.policy!r}")
    if config.reference not in ("exact", "sampled"):
        _fail("reference", f"must be 'exact' or 'sampled', got {config.reference!r}")
    if not config.pi_star_beta > 0:
        _fail("pi_star_beta", f"must be > 0, got {config.pi_star_beta}")
    m = config.minibatch_prompts
    for field in ("onpolicy_prompts", "offline_prompts"):
        if config[field] % m:
            _fail(field, f"must be a multiple of minibatch_prompts ({m}), got {config[field]}")
    if not config.lr_grid or any(not lr > 0 for lr in config.lr_grid):
        _fail("lr_grid", f"must be a non-empty tuple of values > 0, got {tuple(config.lr_grid)}")
    if not config.methods:
        _fail("methods", "needs at least one reward")
    for reward, names in config.methods.items():
        if reward not in env.REWARDS:
            close = difflib.get_close_matches(reward, env.REWARDS, 1, 0.5)
            _fail(f"methods.{reward}", f"unknown reward; known: {', '.join(env.REWARDS)}"
                  + (f" (did you mean {close[0]!r}?)" if close else ""))
        for name in names:
            try:
                modeseek.get_algorithm(name)
            except ValueError as e:
                _fail(f"methods.{reward}", str(e))
    _check_hparams("hparams", dict(config.hparams))
    for name, over in config.overrides.items():
        try:
            modeseek.get_algorithm(name)
        except ValueError as e:
            _fail(f"overrides.{name}", str(e))
        for key in over:
            if key not in config.hparams:
                close = difflib.get_close_matches(key, config.hparams, 1)
                _fail(f"overrides.{name}.{key}", f"unknown hyperparameter; known: "
                      f"{', '.join(config.hparams)}"
                      + (f" (did you mean {close[0]!r}?)" if close else ""))
        _check_hparams(f"overrides.{name}", dict(over))
    for abl in ("reuse_ablation", "batch_ablation"):
        a = config[abl]
        if a.reward not in config.methods:
            _fail(f"{abl}.reward", f"must be one of the study's rewards "
                  f"{tuple(config.methods)}, got {a.reward!r}")
        for name in a.algorithms:
            if not modeseek.get_algorithm(name).on_policy:
                _fail(f"{abl}.algorithms", f"{name} is not on-policy")
            if name not in config.methods[a.reward]:
                _fail(f"{abl}.algorithms", f"{name} must also be in config.methods.{a.reward} "
                      "(its best lr is chosen there)")
        if not a.grid or any(not isinstance(v, int) or v < 1 for v in a.grid):
            _fail(f"{abl}.grid", f"must be integers >= 1, got {tuple(a.grid)}")


_HPARAM_RULES = {  # name -> (test, requirement)
    "beta": (lambda v: v > 0, "> 0"), "tau": (lambda v: v > 0, "> 0"),
    "rwr_beta": (lambda v: v > 0, "> 0"), "clip_eps": (lambda v: v > 0, "> 0"),
    "weight_clip": (lambda v: v > 0, "> 0"), "threshold": (lambda v: v >= 0, ">= 0"),
    "kl_coef": (lambda v: v >= 0, ">= 0"), "negative_coef": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
}


def _check_hparams(prefix, hp):
    for name, value in hp.items():
        test, requirement = _HPARAM_RULES.get(name, (lambda v: True, ""))
        if not isinstance(value, (int, float)) or not test(value):
            _fail(f"{prefix}.{name}", f"must be {requirement or 'a number'}, got {value!r}")


def make_setup(config, *, stale=False):
    """The main program (every method; on-policy B = M) or, with `stale`, the batch-ablation
    program (its methods only; on-policy B up to M · max B/M, π_old kept per round)."""
    if stale:
        names = tuple(config.batch_ablation.algorithms)
        biggest = config.minibatch_prompts * max(config.batch_ablation.grid)
    else:
        names = []
        for methods in config.methods.values():
            names += [n for n in methods if n not in names]
        biggest = max(config.offline_prompts, config.onpolicy_prompts)
    return BanditSetup(algorithms=tuple(names), num_steps=config.num_steps, policy=config.policy,
                       max_prompts_per_batch=biggest, minibatch_prompts=config.minibatch_prompts,
                       samples_per_prompt=config.samples_per_prompt,
                       eval_prompts=config.eval_prompts, eval_every=config.eval_every,
                       reference=config.reference, pi_star_beta=config.pi_star_beta,
                       stale_batches=stale)


def _record(config, study, algorithm, reward, seed, role, lr, *, reuse=None, prompts=None):
    alg = modeseek.get_algorithm(algorithm)
    hp = dict(config.hparams)
    hp.update(config.overrides.get(algorithm, {}))
    if prompts is None:
        prompts = config.onpolicy_prompts if alg.on_policy else config.offline_prompts
    return dict(study=study, algorithm=algorithm, reward=reward, seed=seed, role=role,
                regime="on-policy" if alg.on_policy else "offline", on_policy=alg.on_policy,
                negative_gradient=alg.negative_gradient,
                reuse=alg.reuse if reuse is None else reuse, prompts_per_batch=prompts,
                learning_rate=float(lr), hparams=hp)


def seeds(config, role):
    s = config.selection_seeds
    return range(s) if role == "selection" else range(s, s + config.verdict_seeds)


def plan_main(config):
    """Every (reward, method, lr, seed) of the main study; selection seeds first."""
    validate(config)
    return [_record(config, "main", a, rw, seed, role, lr)
            for role in ("selection", "verdict") for rw, methods in config.methods.items()
            for a in methods for lr in config.lr_grid for seed in seeds(config, role)]


def best_learning_rates(records):
    """{(reward, algorithm): lr} maximising the median (over selection seeds) mean reward."""
    table = {}
    for r in records:
        if r["study"] == "main" and r["role"] == "selection":
            table.setdefault((r["reward"], r["algorithm"]), {}).setdefault(
                r["learning_rate"], []).append(r["mean_reward"])
    return {k: max(by_lr, key=lambda lr: (np.median(by_lr[lr]), -lr))
            for k, by_lr in table.items()}


def plan_ablations(config, best):
    """Reuse T (B = M) and B/M (T = 1) ablations at each method's best lr, verdict seeds."""
    out = []
    m = config.minibatch_prompts
    for abl, study in ((config.reuse_ablation, "reuse"), (config.batch_ablation, "batch")):
        for a in abl.algorithms:
            for v in abl.grid:
                kw = dict(reuse=v, prompts=m) if study == "reuse" else dict(reuse=1,
                                                                            prompts=v * m)
                out += [_record(config, study, a, abl.reward, seed, "verdict",
                                best[(abl.reward, a)], **kw)
                        for seed in seeds(config, "verdict")]
    return out


def enable_compilation_cache(path):
    """JAX's persistent compilation cache under `path` (a second identical study skips the
    compile). Set before the first compile."""
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _mesh(num_devices):
    devices = jax.devices()
    n = len(devices) if num_devices == 0 else min(num_devices, len(devices))
    return Mesh(np.array(devices[:n]), ("runs",))


# LLVM at -O1 instead of XLA:CPU's default -O3: on the study's programs this halves compile
# CPU time (main program 18.7 → 10.4 CPU-s) and the run-steps measured no slower (0.74 vs 0.76
# CPU-ms, within noise). One codegen module instead of XLA's parallel split: the programs
# already compile side by side (see `run_study`), and splitting cost ≈ 20% more compile CPU
# (whole study 29.1 → 24.4 CPU-s). Fixed for every run, so numbers never depend on it.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 1,
                    "xla_cpu_parallel_codegen_split_count": 1}

_INIT = {}  # (policy, reference, SFT settings) -> (jitted vmapped init, {seed: params})


def initial_params(setup: BanditSetup, seed_list, sharding=None):
    """The policy at π_ref for each seed (stacked along a leading run axis). SFT runs once per
    seed, in one call for all new seeds (split over `sharding`'s devices), and is shared by
    every run and program with the same policy and SFT settings."""
    key = (setup.policy, setup.reference, setup.sft_steps, setup.sft_learning_rate,
           setup.sft_prompts)
    if key not in _INIT:
        _INIT[key] = (jax.jit(jax.vmap(make_init(setup))), {})
    init, cache = _INIT[key]
    missing = sorted(set(seed_list) - set(cache))
    if missing:
        n = 1 if sharding is None else sharding.mesh.devices.size
        padded = missing + missing[-1:] * (-len(missing) % n)
        keys = jax.vmap(jax.random.key)(jnp.asarray(padded))
        if sharding is not None:
            keys = jax.device_put(keys, sharding)
        params, _ = jax.device_get(
            init.lower(keys).compile(compiler_options=COMPILER_OPTIONS)(keys))
        for i, s in enumerate(missing):
            cache[s] = jax.tree.map(lambda x, i=i: x[i], params)
    return jax.tree.map(lambda *xs: np.stack(xs), *[cache[s] for s in seed_list])


class Runner:
    """Compiles the study's program once and runs tables of records through it.

    Each call runs `chunk_size` runs per device (the run axis split over the devices), so the
    per-device program, and with it every run's numbers, is the same on 1 or 2 devices.
    Different chunk sizes change XLA's vectorisation and so the last float bits, which a
    chaotic run (a sample flipping) can amplify."""

    def __init__(self, setup: BanditSetup, *, chunk_size=8, devices=0):
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"config.chunk_size: must be an integer >= 1, got {chunk_size!r}")
        self.setup = setup
        self.mesh = _mesh(devices)
        self.chunk_size = chunk_size * self.mesh.devices.size
        self.sharding = NamedSharding(self.mesh, PartitionSpec("runs"))
        # The algorithm index is one scalar per call, not a run axis: vmapping a traced
        # per-run index would turn the objective's `lax.switch` into every branch computed
        # and selected, so `run` groups the runs by algorithm, one algorithm per chunk.
        train = make_train(setup)
        self._train = jax.jit(jax.vmap(
            lambda key, params, rewards, knobs, algorithm: train(
                key, params, rewards, knobs | {"algorithm": algorithm}),
            in_axes=(0, 0, 0, 0, None)))
        self._compiled = None
        self.timings = dict(compile_s=0.0, run_s=0.0, sft_s=0.0, run_steps=0)

    def _initial_params(self, seed_list):
        t0 = time.perf_counter()
        params = initial_params(self.setup, seed_list, self.sharding)
        self.timings["sft_s"] += time.perf_counter() - t0
        return params

    def _host_args(self, runs):
        """(keys, rewards, knobs, algorithm index) of a chunk, on the host."""
        index = {name: i for i, name in enumerate(self.setup.algorithms)}
        knobs = {name: np.array([r["hparams"][name] for r in runs], np.float32)
                 for name in runs[0]["hparams"]}
        knobs["learning_rate"] = np.array([r["learning_rate"] for r in runs], np.float32)
        (algorithm,) = {index[r["algorithm"]] for r in runs}
        knobs["reuse"] = np.array([r["reuse"] for r in runs], np.int32)
        knobs["prompts_per_batch"] = np.array([r["prompts_per_batch"] for r in runs], np.int32)
        keys = jax.vmap(jax.random.key)(jnp.asarray([r["seed"] for r in runs]))
        rewards = np.stack([env.reward_table(r["reward"]) for r in runs]).astype(np.float32)
        return keys, rewards, knobs, np.int32(algorithm)

    def _args(self, runs):
        keys, rewards, knobs, algorithm = self._host_args(runs)
        params = self._initial_params([r["seed"] for r in runs])
        args = jax.device_put((keys, params, rewards, knobs), self.sharding)
        return (*args, jax.device_put(algorithm, NamedSharding(self.mesh, PartitionSpec())))

    def compile(self, example_run):
        """Compile the program for chunks of runs shaped like `example_run` (a record), from
        shapes alone: no SFT and no run is needed, so programs can compile concurrently (XLA
        releases the GIL) while the SFT runs (see `run_study`)."""
        if self._compiled is not None:
            return
        keys, rewards, knobs, algorithm = self._host_args([example_run] * self.chunk_size)
        params = jax.eval_shape(jax.vmap(make_init(self.setup)), keys)[0]
        spec = lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,  # noqa: E731
                                                        sharding=sharding)
        runs_axis = jax.tree.map(lambda x: spec(x, self.sharding), (keys, params, rewards, knobs))
        t0 = time.perf_counter()
        self._compiled = self._train.lower(
            *runs_axis, spec(algorithm, NamedSharding(self.mesh, PartitionSpec()))).compile(
                compiler_options=COMPILER_OPTIONS)
        self.timings["compile_s"] += time.perf_counter() - t0

    def run(self, runs, progress=None):
        """Curves {name: [R, K]} and all outputs {name: [R, ...]} of `runs`, in order."""
        m = self.setup.minibatch_prompts
        for r in runs:
            if r["algorithm"] not in self.setup.algorithms:
                raise ValueError(f"run {r['algorithm']}: not one of this program's algorithms "
                                 f"{self.setup.algorithms}")
            b = r["prompts_per_batch"]
            if b > self.setup.max_prompts_per_batch or b % m:
                raise ValueError(f"run {r['algorithm']}: prompts_per_batch {b} must be a "
                                 f"multiple of {m} up to {self.setup.max_prompts_per_batch}")
            if r["on_policy"] and b != m and not self.setup.stale_batches:
                raise ValueError(f"run {r['algorithm']}: on-policy B = {b} > M = {m} needs a "
                                 "setup with stale_batches=True")
        self._initial_params(sorted({r["seed"] for r in runs}))  # every seed's SFT at once
        size = self.chunk_size
        chunks, order = [], []  # (runs, how many are real): one algorithm, padded with its last
        for name in self.setup.algorithms:
            group = [r for r in runs if r["algorithm"] == name]
            order += [i for i, r in enumerate(runs) if r["algorithm"] == name]
            for c in range(0, len(group), size):
                part = group[c:c + size]
                chunks.append((part + part[-1:] * (size - len(part)), len(part)))
        outputs = []
        self.compile(runs[0])
        for chunk, real in chunks:
            args = self._args(chunk)
            t0 = time.perf_counter()
            outputs.append(jax.tree.map(lambda x, real=real: x[:real],
                                        jax.device_get(self._compiled(*args))))
            self.timings["run_s"] += time.perf_counter() - t0
            if progress is not None:
                progress(real)
        self.timings["run_steps"] += len(runs) * self.setup.num_steps
        back = np.argsort(order)  # chunk order -> the order of `runs`
        cat = {k: np.concatenate([o[k] for o in outputs])[back] for k in outputs[0]}
        return {k: cat[k] for k in CURVES}, cat


def summarise(records, curves, outputs, setup):
    """Add each run's measures (bandits.measures.run_measures) to its record, in place."""
    for i, r in enumerate(records):
        max_reward = float(env.reward_table(r["reward"]).max())
        r.update(measures.run_measures(
            curves["expected_reward"][i], curves["entropy"][i], curves["reward_queries"][i],
            eval_every=setup.eval_every, max_reward=max_reward))
        r.update(final_kl_policy_ref=float(curves["kl_policy_ref"][i, -1]),
                 final_peak_mass=float(curves["peak_mass"][i, -1]),
                 final_reward_prompt_std=float(outputs["final_reward_prompt_std"][i]),
                 final_probs=[round(float(p), 6) for p in outputs["final_probs"][i]],
                 peak_action=int(np.argmax(outputs["final_probs"][i])))
    return records


def run_study(config, *, progress=None):
    """Run the whole study: main table, lr selection, ablations (two compiled programs: the
    main one, which also runs the reuse ablation, and the batch ablation's).

    Returns (records, curves {name: [R, K]}, best {(reward, alg): lr}, timings).
    """
    records = plan_main(config)
    t0 = time.perf_counter()
    main = Runner(make_setup(config), chunk_size=config.chunk_size, devices=config.devices)
    runners = [main]
    if config.batch_ablation.algorithms and config.batch_ablation.grid:
        stale = Runner(make_setup(config, stale=True), chunk_size=config.chunk_size,
                       devices=config.devices)
        runners.append(stale)
    # Both programs compile on their own threads while this one runs every seed's SFT: on a
    # 2-core CPU that hides most of the compile time.
    with concurrent.futures.ThreadPoolExecutor(len(runners)) as pool:
        compiling = [pool.submit(main.compile, records[0])]
        if len(runners) > 1:
            abl = config.batch_ablation
            compiling.append(pool.submit(stale.compile, _record(
                config, "batch", abl.algorithms[0], abl.reward, 0, "verdict",
                config.lr_grid[0], reuse=1, prompts=config.minibatch_prompts)))
        main._initial_params(sorted({r["seed"] for r in records}))
        for future in compiling:
            future.result()
    startup_s = time.perf_counter() - t0
    curves_main, out_main = main.run(records, progress)
    summarise(records, curves_main, out_main, main.setup)
    best = best_learning_rates(records)
    ablations = plan_ablations(config, best)
    reuse = [r for r in ablations if r["study"] == "reuse"]
    batch = [r for r in ablations if r["study"] == "batch"]
    parts = [(records, curves_main)]
    if reuse:
        curves, out = main.run(reuse, progress)
        parts.append((summarise(reuse, curves, out, main.setup), curves))
    if batch:
        curves, out = stale.run(batch, progress)
        parts.append((summarise(batch, curves, out, stale.setup), curves))
    all_records = [r for rs, _ in parts for r in rs]
    for i, r in enumerate(all_records):
        r["curve_index"] = i
    curves = {k: np.concatenate([c[k] for _, c in parts]) for k in CURVES}
    timings = {k: sum(r.timings[k] for r in runners) for k in main.timings}
    timings.update(wall_s=time.perf_counter() - t0, startup_s=startup_s,
                   runs=len(all_records), programs=len(runners),
                   devices=int(main.mesh.devices.size), chunk_size=config.chunk_size)
    return all_records, curves, best, timings


def save(out, records, curves, best, timings):
    """results.json (one record per run, summary numbers) and metrics.npz (the curves, rows
    indexed by each record's `curve_index`)."""
    out = epath.Path(out)
    with (out / "results.json").open("w") as f:
        json.dump({"runs": records, "timings": timings,
                   "best_learning_rates": [dict(reward=k[0], algorithm=k[1], lr=v)
                                           for k, v in best.items()]}, f, indent=1)
    with (out / "metrics.npz").open("wb") as f:
        np.savez_compressed(f, **curves)
