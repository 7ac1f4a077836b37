"""Diagnose a checkpoint before fine-tuning it (issue 14): is the reward's peak where π_ref
samples (C1), does the preference data cover π_ref (C2), and which methods does PAPER.md §1's
rule recommend?

  python -m llm.diagnose --model smollm2 --reward rule:neg_length --prompt "..." --prompt "..."
  python -m llm.diagnose --model /path/to/hf_folder --reward fn:my_pkg.rewards:score \\
      --prompts prompts.jsonl --data prefs.jsonl --samples 16 --out runs/diagnose

--model: "smollm2", an HF folder, a .gguf file, or "tiny" (a random byte-level model, tests).
--reward KIND:VALUE (llm.rewards): rule:neg_length, rule:neg_length_distance:MODE,
fn:package.module:function (TRL's convention), model:PATH, hf_model:PATH; a bare rule name
also works. --prompts / --data: JSONL or Parquet read by `llm.data.records` (prompt rows; or
preference pairs, whose responses' log π_ref are compared with π_ref's own samples: C2).

Method: N samples per prompt from π_ref at temperature 1 (the sampler's log-probs are then
log π_ref(y|x), summed over response tokens, EOS included); rewards min–max scaled to [0, 1]
over all samples and β = --beta (0.1: the bandit's convention); `modeseek.diagnose_samples`
per prompt, medians over prompts; C2 pooled over prompts. Writes OUT/report.md,
OUT/scatter.png (log π_ref vs reward) and OUT/diagnose.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import modeseek
from modeseek import decoder as dec
from modeseek import sampler


def reward_spec(text: str):
    """--reward KIND:VALUE → an llm.rewards spec (ValueError naming the flag when malformed)."""
    from llm import rewards

    kind, _, value = text.partition(":")
    if kind in rewards.RULES:  # a bare rule name
        kind, value = "rule", text
    if kind == "rule":
        rule, _, mode = value.partition(":")
        return rewards.reward_config("rule", rule=rule, **({"mode": float(mode)} if mode else {}))
    if kind == "fn":
        return rewards.reward_config("fn", fn=value)
    if kind in ("model", "hf_model") and value:
        return rewards.reward_config(kind, path=value)
    raise ValueError(f"--reward {text!r}: expected rule:NAME[:MODE], fn:MODULE:FUNCTION, "
                     f"model:PATH or hf_model:PATH (rules: {', '.join(rewards.RULES)})")


def _prompt_ids(tokenizer, prompts, chat):
    """Token ids of each prompt: a string (one user turn) or a chat-message list."""
    from llm.data.encoding import encode_prompt

    return [encode_prompt(tokenizer, [{"role": "user", "content": p}] if isinstance(p, str)
                          else p, use_chat_template=chat) for p in prompts]


def sample_reference(key, config, params, tokenizer, prompts, reward, *, samples,
                     max_new_tokens, chat):
    """(log π_ref(y|x) [P, N], rewards [P, N], response lengths [P, N], EOS included) for N
    samples per prompt at temperature 1."""
    from llm.generate import fit_to_context
    from llm.reward_types import RewardInputs

    ids, _ = fit_to_context(_prompt_ids(tokenizer, prompts, chat), max_new_tokens=max_new_tokens,
                            max_len=config.max_len)
    tokens, mask = sampler.pad_prompts(ids, tokenizer.pad_id, side="left")
    out = sampler.sample(key, params, config, jnp.asarray(np.repeat(tokens, samples, 0)),
                         jnp.asarray(np.repeat(mask, samples, 0)), max_new_tokens=max_new_tokens,
                         eos_id=getattr(tokenizer, "eos_ids", None) or tokenizer.eos_id,
                         pad_id=tokenizer.pad_id)
    resp_mask = np.asarray(out.response_mask).astype(bool)
    logp = np.sum(np.asarray(out.response_logps, np.float64) * resp_mask, -1)
    P, L = len(prompts), resp_mask.shape[-1]
    inputs = RewardInputs(prompt_tokens=tokens, prompt_mask=mask.astype(bool),
                          response_tokens=np.asarray(out.response_tokens).reshape(P, samples, L),
                          response_mask=resp_mask.reshape(P, samples, L))
    return (logp.reshape(P, samples), reward(inputs).astype(np.float64),
            resp_mask.sum(-1).reshape(P, samples))


def data_logps(config, params, tokenizer, rows, *, chat, batch=16):
    """log π_ref of each row's chosen and rejected response given its prompt, [2·rows]."""
    from llm.data.encoding import encode_response

    prompt_ids = _prompt_ids(tokenizer, [r["prompt"] for r in rows], chat)
    seqs = [(p, encode_response(tokenizer, r[name]))
            for p, r in zip(prompt_ids, rows) for name in ("chosen", "rejected")]
    seqs = [(p, y) for p, y in seqs if len(p) + len(y) <= config.max_len]
    if not seqs:
        raise ValueError(f"--data: no prompt + response fits the model's context of "
                         f"{config.max_len} tokens")
    out = []
    for i in range(0, len(seqs), batch):
        part = seqs[i:i + batch]
        width = min(sampler.bucket_length(max(len(p) + len(y) for p, y in part)),
                    config.max_len)  # few shapes: few compiles
        tok = np.full((len(part), width), tokenizer.pad_id, np.int32)
        attn = np.zeros((len(part), width), bool)
        loss = np.zeros((len(part), width), bool)
        for j, (p, y) in enumerate(part):
            tok[j, :len(p) + len(y)] = p + y
            attn[j, :len(p) + len(y)] = True
            loss[j, len(p):len(p) + len(y)] = True
        out.append(np.asarray(_sequence_logps(params, tok, attn, loss, config=config),
                              np.float64))
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnames="config")
def _sequence_logps(params, tokens, attention_mask, loss_mask, *, config):
    logits = dec.forward(params, config, tokens, attention_mask_BxL=attention_mask)
    return modeseek.sequence_logprobs(logits, tokens, loss_mask)


def measures(logp, rewards, *, beta, data=None):
    """Medians of `modeseek.diagnose_samples` over the prompts whose reward varies across
    their samples (a constant reward carries no C1 information: ESS/n would read 1), rewards
    min–max scaled to [0, 1] over all samples; ks/overlap pooled over prompts when `data`
    (log π_ref [M]) is given. ValueError when no prompt's reward varies."""
    varies = np.ptp(rewards, axis=1) > 0
    if not varies.any():
        raise ValueError("the reward is constant over every prompt's samples: nothing to "
                         "diagnose (e.g. every response hit --max-new-tokens; raise it, or "
                         "--samples)")
    span = rewards.max() - rewards.min()
    scaled = (rewards - rewards.min()) / span
    per_prompt = modeseek.diagnose_samples(logp[varies], scaled[varies], beta=beta)
    out = {k: float(np.nanmedian(np.asarray(v))) for k, v in per_prompt.items()}
    out["prompts_used"] = float(varies.sum())
    if data is not None:
        out["ks"] = float(modeseek.coverage_ks(data, logp.reshape(-1)))
        out["overlap"] = float(modeseek.coverage_overlap(data, logp.reshape(-1)))
    return out


def write_outputs(out, logp, rewards, m, rec, args_dict, data=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in range(len(logp)):
        ax.scatter(logp[p], rewards[p], s=10, alpha=0.7)
    if data is not None:
        for x in data:
            ax.axvline(x, color="k", alpha=0.15, lw=0.5)
    ax.set_xlabel("log π_ref(y|x) (one colour per prompt; grey lines: preference data)")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scatter.png"), dpi=100)
    plt.close(fig)
    lines = ["# Diagnostic before fine-tuning (modeseek.diagnose)", "",
             f"Model `{args_dict['model']}`, reward `{args_dict['reward']}`, "
             f"{logp.shape[0]} prompts × {logp.shape[1]} samples from π_ref (temperature 1, "
             f"≤ {args_dict['max_new_tokens']} new tokens), β = {args_dict['beta']:g} on rewards "
             "scaled to [0, 1]" + ("" if data is None else f"; {len(data)} preference-data "
                                   "responses for C2") + ".", "",
             f"**Recommendation: {rec.method_class}**", ""]
    cut = m.get("truncated_fraction", 0.0)
    if cut > 0.5:
        lines += [f"Warning: {cut:.0%} of the responses hit the {args_dict['max_new_tokens']}-"
                  "token limit; a length reward is censored there, and C1 uses only the "
                  f"{m['prompts_used']:.0f} of {len(logp)} prompts whose reward varied.", ""]
    lines += [f"- {a}" for a in rec.advice] + ["", "Reasons:", ""]
    lines += [f"- {r}" for r in rec.reasons] + ["", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in m.items()]
    lines += ["", "![log π_ref vs reward](scatter.png)", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out, "diagnose.json"), "w") as f:
        json.dump({"args": args_dict, "measures": m, "recommendation": rec.method_class,
                   "advice": rec.advice, "reasons": rec.reasons,
                   "logp": logp.tolist(), "rewards": rewards.tolist()}, f, indent=1)


def load(name):
    if name == "tiny":
        from llm.models import load_base

        config, _, tokenizer = load_base("tiny", max_len=128)
        init = jax.jit(dec.init_params, static_argnums=1)  # one compile, not per-op dispatch
        return config, init(jax.random.key(0), config), tokenizer
    from llm.checkpoints import load_model

    config, params, tokenizer = load_model(name)
    if tokenizer is None:
        raise ValueError(f"--model {name}: no tokenizer.json")
    return config, params, tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.diagnose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--reward", required=True)
    parser.add_argument("--prompt", action="append", default=[])
    parser.add_argument("--prompts", help="JSONL/Parquet prompt rows (llm.data.records)")
    parser.add_argument("--data", help="JSONL/Parquet preference pairs (C2)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--planned-reuse", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from llm.data import records

    try:  # every check before loading a model
        spec = reward_spec(args.reward)
        prompts = list(args.prompt) + ([r["prompt"] for r in records.read_rows(
            args.prompts, kind="prompts")[0]] if args.prompts else [])
        if not prompts:
            raise ValueError("give --prompt (repeatable) or --prompts FILE")
        if args.samples < 2:
            raise ValueError(f"--samples must be >= 2, got {args.samples}")
        if not args.beta > 0:
            raise ValueError(f"--beta must be > 0, got {args.beta}")
        rows = records.read_rows(args.data, kind="pairs")[0] if args.data else None
        if os.path.exists(os.path.join(args.out, "diagnose.json")):
            raise ValueError(f"--out={args.out} already holds a diagnostic (diagnose.json); "
                             "results are never overwritten: choose a new --out")
    except (ValueError, OSError, records.BadRowError, records.DataFileError) as e:
        parser.error(str(e))
    from llm import rewards

    config, params, tokenizer = load(args.model)
    reward = rewards.build_reward(spec, tokenizer=tokenizer)
    chat = not args.no_chat and getattr(tokenizer, "chat_template", None) is not None
    logp, scores, lengths = sample_reference(
        jax.random.key(args.seed), config, params, tokenizer, prompts, reward,
        samples=args.samples, max_new_tokens=args.max_new_tokens, chat=chat)
    data = None if rows is None else data_logps(config, params, tokenizer, rows, chat=chat)
    try:
        m = measures(logp, scores, beta=args.beta, data=data)
    except ValueError as e:
        parser.error(str(e))
    # responses cut at --max-new-tokens: a length reward is censored there
    m["truncated_fraction"] = float(np.mean(lengths >= args.max_new_tokens))
    rec = modeseek.recommend(m, planned_reuse=args.planned_reuse)
    os.makedirs(args.out, exist_ok=True)
    write_outputs(args.out, logp, scores, m, rec, vars(args), data)
    print(f"{rec.method_class}: " + "; ".join(rec.advice))
    print(f"report: {os.path.join(args.out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
