"""Sampling throughput on SmolLM2-135M-Instruct (CPU): modeseek's KV-cached sampler vs
`transformers` generate (PyTorch, float32), same weights, same prompts, same run; plus the
no-cache loop (full forward every step) at batch 1.

  python benchmarks/decode.py                       # batch 1 and 16, 64 new tokens
  python benchmarks/decode.py --batch-sizes 1 --dtypes float32 --no-uncached --repeats 1

Prints new tokens per second for the whole call (prefill + sampling; compile excluded), best of
--repeats, by wall clock and per CPU-second (all threads; less sensitive to other processes on
a shared machine), and the ratios. Both sides sample at temperature 1 with no top-k/top-p and
never stop early, so both produce exactly batch x new_tokens tokens. modeseek runs once per
--dtypes entry: "float32" is the like-for-like comparison, "bfloat16" casts weights and
activations (float32 accumulation, softmax and log-probs)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llm.huge_pages import reexec_with_huge_pages  # noqa: E402

if __name__ == "__main__":  # before jax loads: glibc reads its tunables at process start
    reexec_with_huge_pages()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from llm.checkpoints import load_smollm2, save_hf  # noqa: E402
from modeseek import sampler  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.",
    "Why is the sky blue?", "Write a haiku about autumn.", "What is 12 times 7?",
    "Give me a tip for learning to cook.", "Who wrote Romeo and Juliet?",
    "Explain photosynthesis in one sentence.", "What is a prime number?",
    "Suggest a name for a pet turtle.", "How many legs does a spider have?",
    "What does a compiler do?", "Translate 'good morning' into Spanish.",
    "Describe the ocean in five words.", "What is the boiling point of water?",
    "Recommend a book for a long train ride.",
]


def _best(fn, repeats):
    """Best wall-clock seconds and best CPU seconds (all threads) over `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def _bench_batch(B, T, args, config, params, tokenizer, prompts, model):
    rows = []
    batch = [prompts[i % len(prompts)] for i in range(B)]
    tokens, mask = sampler.pad_prompts(batch, tokenizer.pad_id, side="left")
    key = [jax.random.key(0)]

    def ours(fn=sampler.sample, config=config):
        key[0], sub = jax.random.split(key[0])
        out = fn(sub, params, config, tokens, mask, max_new_tokens=T, temperature=1.0,
                 pad_id=tokenizer.pad_id)
        jax.block_until_ready(out.response_tokens)
        assert int(out.response_mask.sum()) == B * T

    theirs = None
    if model is not None:
        import torch

        longest = max(map(len, batch))
        hf_ids = np.full((B, longest), tokenizer.pad_id)
        hf_mask = np.zeros((B, longest), np.int64)
        for i, p in enumerate(batch):
            hf_ids[i, longest - len(p):], hf_mask[i, longest - len(p):] = p, 1
        hf_ids, hf_mask = torch.tensor(hf_ids), torch.tensor(hf_mask)

        def theirs(new_tokens=T):
            with torch.no_grad():
                out = model.generate(input_ids=hf_ids, attention_mask=hf_mask, do_sample=True,
                                     temperature=1.0, top_k=0, top_p=1.0,
                                     max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     pad_token_id=tokenizer.pad_id)
            assert out.shape == (B, longest + new_tokens)

        theirs(2)  # warm-up
        theirs_s, theirs_cpu = _best(theirs, args.repeats)
    for dtype in args.dtypes.split(","):
        cfg = config.replace(dtype=dtype)
        start = time.perf_counter()
        ours(config=cfg)
        compile_s = time.perf_counter() - start
        ours_s, ours_cpu = _best(lambda cfg=cfg: ours(config=cfg), args.repeats)
        row = dict(batch=B, dtype=dtype, prompt_bucket=tokens.shape[1],
                   compile_s=round(compile_s, 1), ours=B * T / ours_s,
                   ours_cpu=B * T / ours_cpu, load=round(os.getloadavg()[0], 1))
        if theirs is not None:
            row.update(theirs=B * T / theirs_s, theirs_cpu=B * T / theirs_cpu)
        if B == 1 and dtype == "float32" and not args.no_uncached:
            uncached = lambda: ours(sampler.sample_uncached)
            uncached()  # compile
            unc_s, unc_cpu = _best(uncached, 1)
            row.update(uncached=B * T / unc_s, uncached_cpu=B * T / unc_cpu)
        print(row, flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--no-uncached", action="store_true")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="modeseek compute dtypes to time (transformers runs float32)")
    args = parser.parse_args(argv)
    T = args.new_tokens

    config, params, tokenizer = load_smollm2()
    prompts = [tokenizer.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
          f"SmolLM2-135M float32; {T} new tokens; prompt lengths "
          f"{min(map(len, prompts))}-{max(map(len, prompts))}")

    model = None
    if not args.no_transformers:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count())
        with tempfile.TemporaryDirectory() as tmp:  # the very same weights, through HF's loader
            save_hf(tmp, config, params, tokenizer)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                tmp, dtype=torch.float32).eval()
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
              f"{torch.get_num_threads()} threads")

    rows = []
    for B in [int(b) for b in args.batch_sizes.split(",")]:
        rows += _bench_batch(B, T, args, config, params, tokenizer, prompts, model)

    print("\nnew tokens/s, wall clock (per CPU-second in brackets: less sensitive to other load)")
    print("| batch | dtype | modeseek | transformers fp32 | ratio | no-cache loop | cache "
          "speed-up | compile s | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        theirs = ratio = unc = speedup = "-"
        if "theirs" in r:
            theirs = f"{r['theirs']:.1f} ({r['theirs_cpu']:.1f})"
            ratio = f"{r['ours'] / r['theirs']:.2f}x ({r['ours_cpu'] / r['theirs_cpu']:.2f}x)"
        if "uncached" in r:
            unc = f"{r['uncached']:.2f} ({r['uncached_cpu']:.2f})"
            speedup = (f"{r['ours'] / r['uncached']:.1f}x "
                       f"({r['ours_cpu'] / r['uncached_cpu']:.1f}x)")
        print(f"| {r['batch']} | {r['dtype']} | {r['ours']:.1f} ({r['ours_cpu']:.1f}) | {theirs} "
              f"| {ratio} | {unc} | {speedup} | {r['compile_s']} | {r['load']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
