"""Training throughput on SmolLM2-135M (CPU, float32): one forward + backward + AdamW step on
8 x 256 tokens, modeseek (one jitted, donated step) vs `transformers` + torch.optim.AdamW, same
weights, same tokens, same run.

  python benchmarks/forward.py                 # 8 x 256, 3 timed steps per side
  python benchmarks/forward.py --batch 4 --length 128 --steps 2

Prints tokens/s (batch x length / step time; best of the timed steps, sides alternating), also
per CPU-second (all threads; less sensitive to other processes on a shared machine), and the
achieved GFLOP/s (6 x parameters x tokens + attention, the usual estimate), with the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llm.checkpoints import load_smollm2, save_hf  # noqa: E402
from modeseek import decoder as dec  # noqa: E402


def make_step(config, optimizer):
    def loss_fn(params, tokens_BxL):
        logits_BxLxV = dec.forward(params, config, tokens_BxL)[:, :-1]
        # logits at t predict token t+1; float32 log-softmax
        lse_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
        target_BxL = jnp.take_along_axis(logits_BxLxV, tokens_BxL[:, 1:, None], -1)[..., 0]
        return jnp.mean(lse_BxL - target_BxL)

    def step(params, opt_state, tokens_BxL):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BxL)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def compile_times(depths, batch: int, length: int) -> None:
    """Lower + compile the training step (forward, backward, AdamW) of a SmolLM2-width model at
    each depth, from abstract shapes only (nothing is allocated); prints seconds per depth."""
    optimizer = optax.adamw(1e-5, weight_decay=0.0)
    print(f"jax {jax.__version__}, {jax.default_backend()}; SmolLM2-135M width, {batch} x {length}")
    print("| layers | lower s | compile s | CPU s | load |")
    print("|---|---|---|---|---|")
    for depth in depths:
        config = dec.DecoderConfig.smollm2_135m(num_layers=depth)
        params = jax.eval_shape(dec.init_params, jax.random.key(0), config)
        opt_state = jax.eval_shape(optimizer.init, params)
        tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
        step = make_step(config, optimizer)
        start, start_cpu = time.perf_counter(), time.process_time()
        lowered = step.lower(params, opt_state, tokens)
        lowered_s = time.perf_counter() - start
        lowered.compile()
        total, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        print(f"| {depth} | {lowered_s:.2f} | {total - lowered_s:.2f} | {cpu:.2f} | "
              f"{os.getloadavg()[0]:.1f} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--compile-only", type=str, default="",
                        help="comma-separated depths, e.g. 2,8,32: compile times only")
    args = parser.parse_args(argv)
    B, L = args.batch, args.length
    if args.compile_only:
        compile_times([int(d) for d in args.compile_only.split(",")], B, L)
        return 0

    config, params, tokenizer = load_smollm2()
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (B, L)).astype(np.int32)
    n_params = dec.num_params(config)
    flops = 6 * n_params * B * L + 12 * config.num_layers * config.embed_dim * B * L * L
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs; SmolLM2-135M ({n_params / 1e6:.1f}M "
          f"params) float32; {B} x {L} tokens; AdamW lr 1e-5")

    model = None
    if not args.no_transformers:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count())
        with tempfile.TemporaryDirectory() as tmp:
            save_hf(tmp, config, params, tokenizer)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                tmp, dtype=torch.float32).train()
        torch_opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        torch_tokens = torch.tensor(tokens, dtype=torch.long)
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
              f"{torch.get_num_threads()} threads")

    step = make_step(config, optax.adamw(1e-5, weight_decay=0.0))
    state = [params, None]
    state[1] = optax.adamw(1e-5, weight_decay=0.0).init(params)

    def ours():
        state[0], state[1], loss = step(state[0], state[1], tokens)
        return float(loss)

    def theirs():
        torch_opt.zero_grad(set_to_none=True)
        loss = model(input_ids=torch_tokens, labels=torch_tokens).loss
        loss.backward()
        torch_opt.step()
        return float(loss)

    start = time.perf_counter()
    loss0 = ours()
    print(f"modeseek compile + first step {time.perf_counter() - start:.1f}s, loss {loss0:.3f}")
    if model is not None:
        print(f"transformers first step loss {theirs():.3f}")
    best = {"modeseek": [float("inf")] * 2, "transformers": [float("inf")] * 2}
    for _ in range(args.steps):
        for name, fn in (("modeseek", ours), ("transformers", theirs if model else None)):
            if fn is None:
                continue
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]

    print(f"\nload average {os.getloadavg()[0]:.1f}; per CPU-second in brackets")
    print("| side | step s | tokens/s | GFLOP/s |")
    print("|---|---|---|---|")
    for name, (t, cpu) in best.items():
        if t < float("inf"):
            print(f"| {name} | {t:.2f} | {B * L / t:.1f} ({B * L / cpu:.1f}) | "
                  f"{flops / t / 1e9:.1f} |")
    if model is not None:
        (ours_t, ours_cpu), (theirs_t, theirs_cpu) = best["modeseek"], best["transformers"]
        print(f"\nratio modeseek / transformers: {theirs_t / ours_t:.2f}x wall clock, "
              f"{theirs_cpu / ours_cpu:.2f}x per CPU-second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
