"""Generate a reply from a real checkpoint.

  python -m llm.generate --model smollm2 --prompt "What is the capital of France?"
  python -m llm.generate --model /path/to/hf_folder --prompt "..." --temperature 0.7 --top-p 0.9

--model: "smollm2" (the embedded SmolLM2-135M-Instruct GGUF), an HF folder or a .gguf file.
Instruct models get their chat template (disable with --no-chat). Greedy by default.
API: generate(config, params, tokenizer, prompts, *, ...) -> list[str]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from modeseek import sampler


def generate(config, params, tokenizer, prompts: list[str], *, max_new_tokens: int = 64,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             chat: bool = True) -> list[str]:
    use_chat = chat and tokenizer.chat_template is not None
    ids = [tokenizer.encode_chat([{"role": "user", "content": p}]) if use_chat
           else tokenizer.encode(p) for p in prompts]
    tokens, mask = sampler.pad_prompts(ids, tokenizer.pad_id, side="left")
    out = sampler.sample(jax.random.key(seed), params, config, tokens, mask,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, eos_id=tokenizer.eos_ids or None, pad_id=tokenizer.pad_id)
    response, keep = np.asarray(out.response_tokens), np.asarray(out.response_mask) == 1
    return [tokenizer.decode(r[k]) for r, k in zip(response, keep)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompt", action="append", required=True,
                        help="repeat for a batch of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-chat", action="store_true")
    args = parser.parse_args(argv)

    from llm.checkpoints import load_model

    start = time.perf_counter()
    config, params, tokenizer = load_model(args.model, dtype=args.dtype)
    if tokenizer is None:
        parser.error(f"{args.model} has no tokenizer.json")
    loaded = time.perf_counter()
    replies = generate(config, params, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       seed=args.seed, chat=not args.no_chat)
    for reply in replies:
        print(reply)
    print(f"[load {loaded - start:.1f}s, generate {time.perf_counter() - loaded:.1f}s]",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
