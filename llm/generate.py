"""Generate a reply from a real checkpoint.

  python -m llm.generate --model smollm2 --prompt "What is the capital of France?"
  python -m llm.generate --model /path/to/hf_folder --prompt "..." --temperature 0.7 --top-p 0.9

--model: "smollm2" (the embedded SmolLM2-135M-Instruct GGUF), an HF folder or a .gguf file.
Instruct models get their chat template (disable with --no-chat). Greedy by default. A prompt
longer than the model's context minus --max-new-tokens keeps its end (--on-overflow error:
refuse). Bad sampling arguments exit with a one-line error naming the argument.
API: generate(config, params, tokenizer, prompts, *, ...) -> list[str]
     fit_to_context(prompt_ids, *, max_new_tokens, max_len, on_overflow) -> (ids, truncated)
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from absl import logging

from modeseek import sampler
from modeseek._checks import check_sampling_args

OVERFLOW = ("truncate", "error")


def fit_to_context(prompts: list[list[int]], *, max_new_tokens: int, max_len: int,
                   on_overflow: str = "truncate") -> tuple[list[list[int]], int]:
    """(prompts, number truncated): prompt + max_new_tokens must fit the model's context of
    max_len tokens. A longer prompt keeps its LAST max_len − max_new_tokens tokens (the end,
    next to the reply, is what conditions it; as in `llm.data`), with a logged count, or with
    on_overflow="error" raises ValueError naming the prompt and both lengths."""
    if on_overflow not in OVERFLOW:
        raise ValueError(f"on_overflow must be one of {OVERFLOW}, got {on_overflow!r}")
    room = max_len - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                         f"model's context of {max_len} tokens")
    out, cut = [], 0
    for i, ids in enumerate(prompts):
        if len(ids) > room:
            if on_overflow == "error":
                raise ValueError(f"prompt {i}: {len(ids)} tokens + max_new_tokens="
                                 f"{max_new_tokens} exceed the model's context of {max_len}; "
                                 "shorten it or lower max_new_tokens")
            ids, cut = ids[len(ids) - room:], cut + 1
        out.append(list(ids))
    if cut:
        logging.warning("%d of %d prompts truncated to their last %d tokens (context %d, "
                        "max_new_tokens %d)", cut, len(prompts), room, max_len, max_new_tokens)
    return out, cut


def generate(config, params, tokenizer, prompts: list[str], *, max_new_tokens: int = 64,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             chat: bool = True, on_overflow: str = "truncate") -> list[str]:
    """Replies to `prompts`. User text never becomes control tokens (see
    `llm.data.encoding.encode_prompt`); prompts longer than the context are cut or refused
    (`fit_to_context`); bad sampling arguments raise a one-line ValueError."""
    from llm.data.encoding import encode_prompt

    check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p,
                        max_new_tokens=max_new_tokens, max_len=config.max_len)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"embedding has {config.vocab_size} rows")
    use_chat = chat and getattr(tokenizer, "chat_template", None) is not None
    ids = [encode_prompt(tokenizer, [{"role": "user", "content": p}], use_chat_template=use_chat)
           for p in prompts]
    ids, _ = fit_to_context(ids, max_new_tokens=max_new_tokens, max_len=config.max_len,
                            on_overflow=on_overflow)
    tokens, mask = sampler.pad_prompts(ids, tokenizer.pad_id, side="left")
    out = sampler.sample(jax.random.key(seed), params, config, tokens, mask,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, eos_id=getattr(tokenizer, "eos_ids", None) or
                         tokenizer.eos_id, pad_id=tokenizer.pad_id)
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
    parser.add_argument("--on-overflow", default="truncate", choices=OVERFLOW,
                        help="a prompt longer than the context: keep its end, or refuse")
    args = parser.parse_args(argv)
    try:  # before loading anything
        check_sampling_args(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens)
    except ValueError as e:
        parser.error(str(e))

    from llm.checkpoints import load_model

    start = time.perf_counter()
    config, params, tokenizer = load_model(args.model, dtype=args.dtype)
    if tokenizer is None:
        parser.error(f"{args.model} has no tokenizer.json")
    loaded = time.perf_counter()
    try:
        replies = generate(config, params, tokenizer, args.prompt,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                           chat=not args.no_chat, on_overflow=args.on_overflow)
    except ValueError as e:
        parser.error(str(e))
    for reply in replies:
        print(reply)
    print(f"[load {loaded - start:.1f}s, generate {time.perf_counter() - loaded:.1f}s]",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
