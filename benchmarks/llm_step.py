"""On-policy DPO iteration speed (generation / scoring / update) vs TRL's online DPO, and on a GPU
the update step's model-FLOPs utilisation for a 1B-class model.

    .venv/bin/python benchmarks/llm_step.py                      # CPU: SmolLM2-135M, ours only
    .venv/bin/python benchmarks/llm_step.py   # + TRL ratio: needs benchmarks/make_trl_env.sh
    python3 benchmarks/llm_step.py --mode gpu                    # GPU: Pythia-1.4B-shaped model

CPU setup = TRL's `benchmarks/trl_online_dpo.py --setup smollm2`: SmolLM2-135M-Instruct (fp32),
4 min-length prompts through the chat template, 2 completions each of 48 new tokens (the full 48
always: no EOS stop, as TRL's side forces), reward = −length, one DPO update per iteration on all
4 prompts × 2 samples. Ours: KV-cached sampling, one scoring pass (policy + reference
log-probs), one jitted donated update; then the same iteration as one compiled program
(`modeseek.make_iteration`, what the stage field `fuse_iteration` runs). The two sides run one
after the other (never at the same time) and the load average is printed with each, since the
machine is shared.

GPU mode: a randomly initialised Pythia-1.4B-shaped decoder (bf16 compute, fp32 params and Adam
state), update = forward + backward + AdamW on a [batch, seq] batch of a DPO pair loss; MFU =
6·N·tokens-style FLOPs (llm.logs.update_flops) / (time × peak bf16 FLOP/s); plus KV-cached
generation tokens/s. Prints one JSON line per measurement.

Measured 2026-12-02 (huge pages on both sides, load 1.4–1.9): phases 10.8–13.3 s, one program
  11.2–12.7 s, TRL 10.7–12.2 s: 0.80–1.07× (benchmarks/README.md, last section).
Measured (2026-11-27; the CPU is shared, so the load average is part of every number):
  CPU, SmolLM2-135M, ours 18.6 s/iteration (generation 7.2, scoring 2.2, update 9.2) vs TRL
      20.4 s/step: 1.10× at load 2.8–3.6. An earlier run at load 8–14, before scoring stopped
      recomputing the policy log-probs, gave 156 s vs 66.6 s (0.43×). The 3× goal is not met.
  GPU, NVIDIA H200 (jax 0.11.2), Pythia-1.4B-shaped, bf16 compute, 16 × 1024 tokens per update:
      0.362 s/step, 45.2k tokens/s, 383 TFLOP/s = 38.7% MFU of 989 TFLOP/s (goal 40%);
      batch 32 × 1024 ran out of memory (naive attention keeps f32 scores). Generation (KV cache,
      64 prompts of 128 tokens, 256 new tokens): 11.9k tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llm.huge_pages import reexec_with_huge_pages  # noqa: E402

if __name__ == "__main__":  # before jax loads: glibc reads its tunables at process start
    reexec_with_huge_pages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import modeseek  # noqa: E402
from llm import logs, steps  # noqa: E402
from llm import sharding as shd  # noqa: E402
from llm import state as st  # noqa: E402
from modeseek import decoder as dec  # noqa: E402

# The TRL side runs from the repo's own environment (benchmarks/make_trl_env.sh).
REPO_TRL_PYTHON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               ".venv-trl", "bin", "python")

def load_average() -> float:
    return os.getloadavg()[0]


def time_iterations(config, params, prompts, mask, *, iterations, warmup, samples_per_prompt,
                    max_new_tokens, pad_id, one_program=True):
    """Mean seconds of generation / scoring / update over `iterations` after `warmup`, phase by
    phase (three programs, each blocked on); then, with `one_program`, the same iteration as
    one compiled program (`modeseek.make_iteration`, what `fuse_iteration` runs)."""
    mesh = shd.make_mesh(1, -1, 1)
    optimizer = modeseek.make_optimizer(learning_rate=1e-6, max_grad_norm=1.0)
    policy = modeseek.PolicyModel(config)
    sampling = modeseek.Sampling(max_new_tokens=max_new_tokens, pad_id=pad_id)
    loss_fn = modeseek.make_rollout_loss("onpolicy_dpo", policy, sampling,
                                         modeseek.resolve_hparams())
    shardings, _ = st.param_shardings(config, mesh)
    params = shd.place_params(params, shardings)
    ref = shd.place_params(jax.device_get(params), shardings)
    state_sh = st.state_shardings(optimizer, shardings, params, mesh)
    state = st.init_state(params, optimizer, state_sh)
    num_prompts = prompts.shape[0]
    generate = st.jit_eval(lambda p, t, m, k: modeseek.generate(
        k, policy, p, t, m, sampling=sampling, samples_per_prompt=samples_per_prompt), mesh)

    def score_fn(p, r, s):
        rewards = -jnp.sum(s.response_mask, 1).astype(jnp.float32)
        return modeseek.score_rollout(policy, p, r, s, rewards.reshape(num_prompts, -1))

    score = st.jit_sharded(score_fn, mesh)
    update_fn = modeseek.make_update(modeseek.make_train_step(loss_fn, optimizer), reuse=1,
                                     minibatch_prompts=num_prompts)
    update = st.jit_train_step(update_fn, state_sh, mesh)
    g = shd.global_batch({"t": prompts, "m": mask}, mesh)
    rows = []
    for i in range(warmup + iterations):
        key = jax.random.key(i)
        t0 = time.perf_counter()
        samples = jax.block_until_ready(generate(state.params, g["t"], g["m"], key))
        t1 = time.perf_counter()
        data = jax.block_until_ready(score(state.params, ref, samples))
        t2 = time.perf_counter()
        state, _ = jax.block_until_ready(update(state, data, key))
        t3 = time.perf_counter()
        if i >= warmup:
            rows.append((t1 - t0, t2 - t1, t3 - t2,
                         float(np.sum(jax.device_get(data.attention_mask)))))
    gen, sc, upd, tokens = (float(np.mean(c)) for c in zip(*rows, strict=True))
    # tokens/s counts every real token once for scoring and once for the update
    out = {"seconds_per_iteration": gen + sc + upd, "generation_s": gen, "scoring_s": sc,
           "update_s": upd, "tokens_per_s": tokens * 2 / (gen + sc + upd),
           "generation_tokens_per_s": num_prompts * samples_per_prompt * max_new_tokens / gen}
    if one_program:  # the same iteration as one compiled program (stage field fuse_iteration)
        def score_all(p, s, r):
            rollout = score_fn(p, r, s)
            return rollout, {}, {"proxy": rollout.rewards}

        iteration = st.jit_train_step(modeseek.make_iteration(
            policy, sampling, samples_per_prompt=samples_per_prompt, update=update_fn,
            score=score_all), state_sh, mesh)
        seconds = []
        for i in range(warmup + iterations):
            t0 = time.perf_counter()
            state, _ = jax.block_until_ready(iteration(state, g["t"], g["m"], jax.random.key(i),
                                                       ref))
            if i >= warmup:
                seconds.append(time.perf_counter() - t0)
        out["one_program_seconds_per_iteration"] = float(np.mean(seconds))
    return out


def smollm2_prompts(tokenizer, num_prompts):
    from llm.data import default_dataset_path, make_loader

    it, _ = make_loader(default_dataset_path("train"), tokenizer, batch_size=num_prompts,
                        max_prompt_len=40, prompts_only=True, shuffle=False, num_epochs=1,
                        num_threads=1)
    batch = next(iter(it))
    return batch["prompt_tokens"], batch["prompt_mask"]


def cpu_mode(args):
    from llm.checkpoints import load_model

    config, params, tokenizer = load_model("smollm2")
    prompts, mask = smollm2_prompts(tokenizer, 4)
    load_before = load_average()
    ours = time_iterations(config, jax.tree.map(np.asarray, params), prompts, mask,
                           iterations=args.iterations, warmup=args.warmup, samples_per_prompt=2,
                           max_new_tokens=48, pad_id=tokenizer.pad_id or 0)
    ours.update(load_average_before=load_before, load_average_after=load_average(),
                prompt_tokens=int(prompts.shape[1]))
    print(json.dumps({"side": "modeseek", "setup": "smollm2", **ours}), flush=True)
    print(f"one program vs phase by phase: "
          f"{ours['seconds_per_iteration'] / ours['one_program_seconds_per_iteration']:.2f}×",
          flush=True)
    if args.trl_python and os.path.exists(args.trl_python):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trl_online_dpo.py")
        load_before = load_average()
        proc = subprocess.run([args.trl_python, script, "--setup", "smollm2", "--steps",
                               str(args.trl_steps), "--warmup", "1"], capture_output=True,
                              text=True, timeout=3600)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return
        trl = json.loads(proc.stdout.strip().splitlines()[-1])
        ratio = trl["seconds_per_step"] / ours["seconds_per_iteration"]
        print(json.dumps({"side": "trl", "seconds_per_step": trl["seconds_per_step"],
                          "load_average_before": load_before,
                          "load_average_after": load_average(),
                          "speedup_vs_trl": ratio}), flush=True)


def gpu_mode(args):
    config = dec.DecoderConfig.pythia_1_4b(dtype="bfloat16", max_len=args.seq)
    mesh = shd.make_mesh(1, -1, 1)
    shardings, _ = st.param_shardings(config, mesh)
    params = st.init_params_sharded(jax.random.key(0), config, shardings)
    optimizer = modeseek.make_optimizer(learning_rate=1e-6, max_grad_norm=1.0)
    loss_fn = steps.make_offline_loss(config, "offline_dpo",
                                      steps.objective_hparams("offline_dpo", {}))
    state_sh = st.state_shardings(optimizer, shardings, params, mesh)
    state = st.init_state(params, optimizer, state_sh)
    step = st.jit_train_step(modeseek.make_train_step(loss_fn, optimizer), state_sh, mesh)
    pairs, half = args.batch // 2, args.seq // 2
    rng = np.random.default_rng(0)
    batch = {"prompt_tokens": rng.integers(0, 50000, (pairs, half)).astype(np.int32),
             "prompt_mask": np.ones((pairs, half), bool),
             "chosen_tokens": rng.integers(0, 50000, (pairs, half)).astype(np.int32),
             "rejected_tokens": rng.integers(0, 50000, (pairs, half)).astype(np.int32),
             "chosen_mask": np.ones((pairs, half), bool),
             "rejected_mask": np.ones((pairs, half), bool),
             "ref_logps": np.full((pairs, 2), -1000.0, np.float32)}
    gb = shd.global_batch(batch, mesh)
    for _ in range(2):
        state, m = jax.block_until_ready(step(state, gb, jax.random.key(0)))
    t0 = time.perf_counter()
    for _ in range(args.iterations):
        state, m = step(state, gb, jax.random.key(0))
    jax.block_until_ready(m)
    seconds = (time.perf_counter() - t0) / args.iterations
    tokens = args.batch * args.seq
    flops = logs.update_flops(config, tokens, args.seq)
    peak = logs.peak_flops_per_device()
    print(json.dumps({"mode": "gpu_update", "device": jax.devices()[0].device_kind,
                      "params": dec.num_params(config), "batch": args.batch, "seq": args.seq,
                      "seconds_per_step": seconds, "tokens_per_s": tokens / seconds,
                      "tflops_per_s": flops / seconds / 1e12,
                      "mfu": logs.mfu(flops, seconds, peak)}), flush=True)
    del state
    gen_params = st.init_params_sharded(jax.random.key(1), config, shardings)
    gen_policy = modeseek.PolicyModel(config)
    generate = jax.jit(lambda p, t, m, k: modeseek.generate(
        k, gen_policy, p, t, m, sampling=modeseek.Sampling(max_new_tokens=256),
        samples_per_prompt=1))
    prompts = jnp.asarray(rng.integers(0, 50000, (args.gen_batch, 128)).astype(np.int32))
    pmask = jnp.ones_like(prompts, bool)
    jax.block_until_ready(generate(gen_params, prompts, pmask, jax.random.key(0)))
    t0 = time.perf_counter()
    jax.block_until_ready(generate(gen_params, prompts, pmask, jax.random.key(1)))
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": "gpu_generation", "batch": args.gen_batch, "new_tokens": 256,
                      "seconds": seconds, "tokens_per_s": args.gen_batch * 256 / seconds}),
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--trl_python", default=REPO_TRL_PYTHON,
                        help="python of the TRL environment (benchmarks/make_trl_env.sh)")
    parser.add_argument("--trl_steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="gpu: sequences per update")
    parser.add_argument("--seq", type=int, default=1024, help="gpu: tokens per sequence")
    parser.add_argument("--gen_batch", type=int, default=64, help="gpu: prompts generated")
    args = parser.parse_args()
    (gpu_mode if args.mode == "gpu" else cpu_mode)(args)


if __name__ == "__main__":
    main()
