"""The synthetic study: build tasks (reference SFT, preference sets, proxy RMs; cached), then
run every algorithm × task × seed with `synthetic.train`.

`build_tasks(config, cache_dir)` returns {task: (TaskData, info)}; `run_study` runs each
algorithm through one `jit(vmap(chunk))` (runs = learning rates × seeds are the vmapped axis;
learning rate and loss hyperparameters are traced, so the program is compiled once per Setup
and process — `compiled` — and reused for every task and every value), returning run records
(summary numbers) and curves {(task, algorithm): {metric: [seeds, I]}}.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

import modeseek
from modeseek.sampler import sample
from synthetic import diagnose, models, tasks
from synthetic.measures import curve_key
from synthetic.train import SUPPORTED, Setup, TaskData, hparams_of, make_train

TOKEN_TASKS = {"R1": 70.0, "R2": 20.0}


def validate(config):
    """Fail before any compilation on bad values, naming the field."""
    if config.study not in ("length", "token_bandit"):
        raise ValueError(f"config.study must be 'length' or 'token_bandit', got {config.study!r}")
    known = tasks.LENGTH_TASKS if config.study == "length" else tuple(TOKEN_TASKS)
    for t in config.tasks:
        if t not in known:
            raise ValueError(f"config.tasks: unknown task {t!r} for study {config.study!r}; "
                             f"known: {', '.join(known)}")
    for name in config.algorithms:
        modeseek.get_algorithm(name)  # unknown names raise, listing the known ones
        if name not in SUPPORTED:
            raise ValueError(f"config.algorithms: {name} is not supported here; supported: "
                             f"{', '.join(SUPPORTED)}")
        hparams_for(config, name)  # unknown names and out-of-range values raise
    rates = learning_rates_of(config)
    if not rates or not all(r > 0 for r in rates):
        raise ValueError(f"config.learning_rate_grid must be rates > 0, got {tuple(rates)}")
    if not 0 < config.target_fraction < 1:
        raise ValueError(f"config.target_fraction must lie in (0, 1), got "
                         f"{config.target_fraction}")
    for name in ("seeds", "iterations", "iterations_per_chunk", "prompts_per_iteration",
                 "samples_per_prompt", "minibatch_prompts", "reuse", "offline_pairs"):
        if not int(config[name]) >= 1:
            raise ValueError(f"config.{name} must be >= 1, got {config[name]}")
    if not 1 <= config.selection_seeds < config.seeds:
        raise ValueError(f"config.selection_seeds must lie in [1, config.seeds) so that some seeds "
                         f"choose the best learning rate and the others judge; got "
                         f"{config.selection_seeds} of {config.seeds} seeds")
    if config.iterations % config.iterations_per_chunk:
        raise ValueError(f"config.iterations ({config.iterations}) must be a multiple of "
                         f"config.iterations_per_chunk ({config.iterations_per_chunk})")
    if config.prompts_per_iteration % config.minibatch_prompts:
        raise ValueError("config.prompts_per_iteration must be a multiple of "
                         "config.minibatch_prompts")
    if config.samples_per_prompt < 2:
        raise ValueError("config.samples_per_prompt must be >= 2 (pairs need two samples)")
    d = config.data
    if config.study == "length" and not 1 < d.mode < d.max_new_tokens - 1:
        raise ValueError(f"config.data.mode must lie inside (1, max_new_tokens − 1), got {d.mode}")
    if config.study == "length" and not 0 <= d.skew_cap < d.max_new_tokens:
        raise ValueError(f"config.data.skew_cap must be 0 (π_ref's median) or a length below "
                         f"max_new_tokens, got {d.skew_cap}")


def _sample_reference(key, ref, cfg, prompts, max_new_tokens, eos_id, per_call=256):
    """Two reference samples per prompt: (responses [K, 2, T], masks [K, 2, T])."""
    outs = []
    for i in range(0, len(prompts), per_call):
        p = jnp.asarray(np.repeat(prompts[i:i + per_call], 2, 0))
        o = sample(jax.random.fold_in(key, i), ref, cfg, p, jnp.ones_like(p),
                   max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=tasks.PAD)
        outs.append((np.asarray(o.response_tokens), np.asarray(o.response_mask)))
    resp = np.concatenate([o[0] for o in outs]).reshape(len(prompts), 2, -1)
    mask = np.concatenate([o[1] for o in outs]).reshape(len(prompts), 2, -1)
    return resp, mask


_OFFLINE = ("prompts", "chosen", "chosen_mask", "rejected", "rejected_mask")


def _fixed_size(arrays, size):
    """Exactly `size` rows (cycling when fewer), so every task's offline set has one shape and
    the tasks share a compiled program."""
    n = len(next(iter(arrays.values())))
    return {k: v[np.arange(size) % n] for k, v in arrays.items()}


def _full(prompts, resp, mask):
    return (np.concatenate([prompts, resp], 1),
            np.concatenate([np.ones_like(prompts), mask], 1).astype(np.int32))


def _reference(config, cache_dir, log):
    d = config.data
    if config.study == "length":
        cfg = models.length_model_config(d.vocab_size, d.prompt_len + d.max_new_tokens,
                                         **config.model)
    else:
        cfg = models.token_model_config(d.vocab_size, **config.model)
    spec = dict(study=config.study, data=d.to_dict(), model=str(cfg), seed=config.data_seed)
    key = models.cache_key(f"reference-{config.study}", spec)
    hit = models.load_cached(cache_dir, key)
    if hit is not None:
        log(f"reference: cached {key}")
        return cfg, hit[0]["params"], dict(hit[1], key=key)
    rng = np.random.default_rng(config.data_seed)
    t0 = time.perf_counter()
    if config.study == "length":
        prompts = tasks.language_prompts(rng, d.sft_examples, d.vocab_size, d.prompt_len)
        resp, mask = tasks.language_responses(rng, prompts, tasks.transition_matrix(
            d.vocab_size, config.data_seed), tasks.length_pmf(d.max_new_tokens, d.mode))
        tok, lm = np.concatenate([prompts, resp], 1), np.concatenate(
            [np.zeros_like(prompts), mask], 1)
        soft = None
    else:
        soft = tasks.cauchy_histogram(d.vocab_size)
        tok, lm = tasks.token_sft_data(rng, d.sft_examples, soft, d.max_new_tokens)
    params, losses = models.train_reference(
        jax.random.key(config.data_seed), cfg, tok, lm, steps=d.sft_steps, batch=d.sft_batch,
        learning_rate=d.sft_lr, soft_target=soft)
    meta = dict(sft_loss_first=float(losses[:10].mean()), sft_loss_last=float(losses[-10:].mean()),
                sft_seconds=time.perf_counter() - t0, spec=spec)
    models.save_cached(cache_dir, key, {"params": params}, meta)
    log(f"reference: trained in {meta['sft_seconds']:.0f} s, SFT loss "
        f"{meta['sft_loss_first']:.3f} -> {meta['sft_loss_last']:.3f}")
    return cfg, params, dict(meta, key=key)


def _length_task(config, cfg, ref, ref_key, task, cache_dir, log):
    d = config.data
    spec = dict(task=task, data=d.to_dict(), model=str(cfg), seed=config.data_seed,
                ref=ref_key)
    key = models.cache_key(f"length-{task}", spec)
    hit = models.load_cached(cache_dir, key)
    if hit is None:
        rng = np.random.default_rng(config.data_seed + 1)
        prompts = tasks.language_prompts(rng, d.pref_prompts, d.vocab_size, d.prompt_len)
        resp, mask = _sample_reference(jax.random.key(config.data_seed + 1), ref, cfg, prompts,
                                       d.max_new_tokens, tasks.EOS)
        ref_lengths = tasks.response_lengths(resp.reshape(-1, resp.shape[-1]),
                                             mask.reshape(-1, mask.shape[-1]))
        cap = d.skew_cap or tasks.median_length(ref_lengths)
        pairs = tasks.preference_pairs(np.random.default_rng(config.data_seed + 2), task,
                                       prompts, resp, mask, skew_cap=cap)
        n = len(pairs["prompts"])
        n_eval = max(int(n * d.heldout_fraction), 1)
        seqs = [_full(pairs["prompts"], pairs[a], pairs[a + "_mask"])
                for a in ("chosen", "rejected")]
        flat = [x for s in seqs for x in s]
        rm, rm_losses = models.train_reward_model(
            jax.random.key(config.data_seed + 3), cfg, ref, [x[n_eval:] for x in flat],
            steps=d.rm_steps, batch=d.rm_batch, learning_rate=d.rm_lr)
        meta = dict(
            task=task, mode=int(pairs["mode"]), pairs=n, heldout_pairs=n_eval,
            skew_cap=int(cap) if task == "skew" else None,
            dropped_ties=pairs["dropped_ties"],
            rm_heldout_accuracy=models.preference_accuracy(rm, cfg, [x[:n_eval] for x in flat]),
            rm_train_accuracy=models.preference_accuracy(rm, cfg, [x[n_eval:] for x in flat]),
            rm_loss_first=float(rm_losses[:10].mean()), rm_loss_last=float(rm_losses[-10:].mean()),
            ref_mean_length=float(ref_lengths.mean()),
            ref_median_length=tasks.median_length(ref_lengths),
            data_mean_length=float(np.mean(np.concatenate(
                [pairs["chosen_length"], pairs["rejected_length"]]))))
        offline = _fixed_size({k: pairs[k][n_eval:] for k in _OFFLINE}, d.offline_pairs_max)
        models.save_cached(cache_dir, key, {"rm": rm, "offline": offline}, meta)
        log(f"{task}: RM held-out accuracy {meta['rm_heldout_accuracy']:.3f} on {n_eval} pairs")
        hit = models.load_cached(cache_dir, key)
    else:
        log(f"{task}: cached {key}")
    arrays, meta = hit
    offline = {k: jnp.asarray(v) for k, v in arrays["offline"].items()}
    pool = tasks.language_prompts(np.random.default_rng(config.data_seed + 4), d.pool_prompts,
                                  d.vocab_size, d.prompt_len)
    data = TaskData(prompts=jnp.asarray(pool), ref_params=ref, rm_params=arrays["rm"],
                    offline=offline, mode=jnp.float32(meta["mode"]),
                    gold_is_mode=jnp.asarray(task == "mode"), peak=jnp.float32(0.0))
    return data, meta


def _token_task(config, cfg, ref, task):
    d = config.data
    peak = TOKEN_TASKS[task]
    rng = np.random.default_rng(config.data_seed + 1)
    prompts = rng.integers(0, d.vocab_size, (d.pref_prompts, 1)).astype(np.int32)
    resp, _ = _sample_reference(jax.random.key(config.data_seed + 1), ref, cfg, prompts,
                                d.max_new_tokens, None)
    pairs = tasks.bump_pairs(prompts, resp, peak)
    offline = {k: jnp.asarray(v) for k, v in
               _fixed_size({k: pairs[k] for k in _OFFLINE}, d.offline_pairs_max).items()}
    ref_reward = float(np.mean(tasks.bump_reward(jnp.asarray(resp[:, 0]),
                                                 jnp.ones(resp[:, 0].shape), peak)))
    meta = dict(task=task, peak=peak, pairs=len(pairs["prompts"]),
                dropped_ties=pairs["dropped_ties"], ref_reward=ref_reward)
    data = TaskData(prompts=jnp.asarray(tasks.token_prompts(d.vocab_size)), ref_params=ref,
                    rm_params=None, offline=offline, mode=jnp.float32(0.0),
                    gold_is_mode=jnp.asarray(False), peak=jnp.float32(peak))
    return data, meta


def reference_pairs(config, cfg, ref):
    """Fresh gold-labellable π_ref pairs (not the preference data): (full sequences [K, 2, S],
    attention masks [K, 2, S], response lengths [K, 2])."""
    d = config.data
    rng = np.random.default_rng(config.data_seed + 5)
    prompts = tasks.language_prompts(rng, d.rm_eval_prompts, d.vocab_size, d.prompt_len)
    resp, mask = _sample_reference(jax.random.key(config.data_seed + 5), ref, cfg, prompts,
                                   d.max_new_tokens, tasks.EOS)
    lengths = tasks.response_lengths(resp, mask)
    k, t = len(prompts), resp.shape[-1]
    seqs, attn = _full(np.repeat(prompts, 2, 0), resp.reshape(2 * k, t), mask.reshape(2 * k, t))
    return seqs.reshape(k, 2, -1), attn.reshape(k, 2, -1), lengths


def rm_on_reference(cfg, rm, pairs, task, mode, max_new_tokens, batch=256):
    """The proxy RM judged on π_ref pairs labelled by the task's gold reward: accuracy
    (`tasks.pair_accuracy`), mean score per response length and whether it falls with length."""
    seqs, attn, lengths = pairs
    scores = []
    for i in range(0, len(seqs), batch):
        s = models.score_pairs(rm, *(jnp.asarray(x[i:i + batch, j]) for j in (0, 1)
                                     for x in (seqs, attn)), config=cfg)
        scores.append(np.stack([np.asarray(v) for v in s], 1))
    scores = np.concatenate(scores)
    acc, n = tasks.pair_accuracy(scores, tasks.gold_reward(lengths, task, mode))
    mean, count = tasks.score_by_length(lengths, scores, max_new_tokens)
    mono, rises, bins = tasks.monotone_decreasing(mean, count)
    seen = count >= 5
    return dict(rm_ref_accuracy=acc, rm_ref_pairs=n, rm_ref_monotone=mono, rm_ref_rises=rises,
                rm_ref_bins=bins, rm_ref_argmax_length=int(np.nanargmax(np.where(seen, mean,
                                                                                 np.nan))),
                rm_score_by_length=[None if not np.isfinite(v) else round(float(v), 4)
                                    for v in mean],
                rm_count_by_length=[int(c) for c in count])


def build_tasks(config, cache_dir, log=print):
    """(model config, reference meta, {task: (TaskData, meta)}); trained pieces are cached, the
    proxy RMs' checks on fresh π_ref pairs (`rm_on_reference`) are recomputed each time."""
    cfg, ref, ref_meta = _reference(config, cache_dir, log)
    if config.study == "length":
        built = {t: _length_task(config, cfg, ref, ref_meta["key"], t, cache_dir, log)
                 for t in config.tasks}
        pairs = reference_pairs(config, cfg, ref)
        for t, (data, meta) in built.items():
            meta.update(rm_on_reference(cfg, data.rm_params, pairs, t, meta["mode"],
                                        config.data.max_new_tokens))
            meta.update(diagnose.task_diagnostic(cfg, ref, pairs, data.offline, t,
                                                 meta["mode"], config.data.prompt_len))
            log(f"{t}: proxy RM accuracy on {meta['rm_ref_pairs']} gold-labelled π_ref pairs "
                f"{meta['rm_ref_accuracy']:.3f}; score falls with length: "
                f"{meta['rm_ref_monotone']}")
    else:
        built = {t: _token_task(config, cfg, ref, t) for t in config.tasks}
    return cfg, ref_meta, built


def learning_rates_of(config) -> tuple:
    """The swept rates: (config.learning_rate,) when > 0, else config.learning_rate_grid."""
    if config.learning_rate > 0:
        return (float(config.learning_rate),)
    return tuple(float(r) for r in config.learning_rate_grid)


def hparams_for(config, algorithm) -> dict:
    """config.hparams with the algorithm's overrides, validated by `modeseek.resolve_hparams`."""
    hp = dict(config.hparams)
    hp.update(config.overrides.get(algorithm, {}))
    where = f"config.overrides.{algorithm}" if algorithm in config.overrides else "config.hparams"
    return modeseek.resolve_hparams(hp, where=where)


def make_setup(config, cfg, algorithm) -> Setup:
    d = config.data
    return Setup(
        algorithm=algorithm, model=cfg, prompt_len=d.prompt_len,
        max_new_tokens=d.max_new_tokens,
        eos_id=tasks.EOS if config.study == "length" else None,
        reward="proxy" if config.study == "length" else "bump",
        prompts_per_iteration=config.prompts_per_iteration,
        samples_per_prompt=config.samples_per_prompt, minibatch_prompts=config.minibatch_prompts,
        reuse=config.reuse, offline_pairs=config.offline_pairs,
        iterations_per_chunk=config.iterations_per_chunk)


@functools.cache
def compiled(setup: Setup):
    """(jit(vmap(init)), jit(vmap(chunk))) over runs, cached per Setup: hyperparameters and
    learning rates are traced arguments, so new values never recompile. The chunk compiles
    with `modeseek.train_compiler_options()` (YNNPACK dots on CPU)."""
    init, chunk = make_train(setup)
    return (jax.jit(jax.vmap(init, in_axes=(0, None, 0))),
            jax.jit(jax.vmap(chunk, in_axes=(0, None, 0)),
                    compiler_options=modeseek.train_compiler_options()))


def run_algorithm(setup: Setup, task_data: dict, *, seeds: int, iterations: int,
                  learning_rates, hparams: dict, bar=None):
    """Every task for one algorithm, runs = learning_rates × seeds vmapped in one program:
    {task: {metric: [R, iterations]}}, R = len(learning_rates) · seeds, rate-major (run
    r has rate learning_rates[r // seeds] and seed r % seeds)."""
    init, chunk = compiled(setup)
    rates = np.repeat(np.asarray(learning_rates, np.float32).reshape(-1), seeds)
    runs = len(rates)
    hp = {k: jnp.full((runs,), v, jnp.float32) for k, v in hparams_of(1.0, hparams).items()}
    hp["learning_rate"] = jnp.asarray(rates)
    out, timing = {}, {"compile_s": 0.0, "run_s": 0.0}
    for task, data in task_data.items():
        keys = jax.vmap(jax.random.key)(jnp.asarray(np.tile(np.arange(seeds), runs // seeds)))
        carry = init(keys, data, hp)
        rows = []
        for c in range(iterations // setup.iterations_per_chunk):
            t0 = time.perf_counter()
            carry, metrics = chunk(carry, data, hp)
            metrics = jax.device_get(metrics)
            dt = time.perf_counter() - t0
            timing["compile_s" if c == 0 and not out else "run_s"] += dt
            rows.append(metrics)
            if bar is not None:
                bar.update(setup.iterations_per_chunk)
        out[task] = {k: np.concatenate([r[k] for r in rows], 1) for k in rows[0]}
    return out, timing


def run_study(config, cache_dir, *, show_progress=True, log=print):
    """Returns (records, curves {"task/algorithm/lr": {metric: [seeds, I]}}, info): every
    algorithm × task × learning rate × seed, rates and seeds vmapped in one program."""
    validate(config)
    t0 = time.perf_counter()
    cfg, ref_meta, built = build_tasks(config, cache_dir, log)
    rates = learning_rates_of(config)
    info = dict(reference=ref_meta, tasks={t: m for t, (_, m) in built.items()},
                build_seconds=time.perf_counter() - t0, timings={}, learning_rates=rates)
    task_data = {t: d for t, (d, _) in built.items()}
    records, curves = [], {}
    total = len(config.algorithms) * len(task_data) * config.iterations
    seeds = config.seeds
    with tqdm.tqdm(total=total, desc="synthetic iterations", unit="it",
                   disable=not show_progress) as bar:
        for algorithm in config.algorithms:
            setup = make_setup(config, cfg, algorithm)
            result, timing = run_algorithm(setup, task_data, seeds=seeds,
                                           iterations=config.iterations, learning_rates=rates,
                                           hparams=hparams_for(config, algorithm), bar=bar)
            info["timings"][algorithm] = timing
            if not show_progress:
                log(f"{algorithm}: compile {timing['compile_s']:.0f} s, run "
                    f"{timing['run_s']:.0f} s")
            alg = modeseek.get_algorithm(algorithm)
            tail = max(config.iterations // 10, 1)
            for task, m_all in result.items():
                for i, lr in enumerate(rates):
                    m = {k: v[i * seeds:(i + 1) * seeds] for k, v in m_all.items()}
                    curves[curve_key(task, algorithm, lr)] = m
                    for seed in range(seeds):
                        records.append(dict(
                            task=task, algorithm=algorithm, seed=seed, learning_rate=lr,
                            on_policy=alg.on_policy, negative_gradient=alg.negative_gradient,
                            reuse=setup.reuse, steps_per_iteration=setup.steps_per_iteration,
                            initial_gold=float(m["gold"][seed, 0]),
                            final_gold=float(m["gold"][seed, -tail:].mean()),
                            final_length=float(m["length"][seed, -tail:].mean()),
                            final_mode_distance=float(m["mode_distance"][seed, -tail:].mean()),
                            final_kl_ref=float(m["kl_ref"][seed, -tail:].mean()),
                            finite=bool(all(np.isfinite(v[seed]).all() for v in m.values()))))
    info["total_seconds"] = time.perf_counter() - t0
    return records, curves, info
