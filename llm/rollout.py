"""On-policy iterations: sample → score → update with reuse, each one jitted program.

    generate(policy_params, prompt_tokens [P,Lp], prompt_mask, key) -> SampleOutput [P·N, ...]
        N samples per prompt from the current policy (`modeseek.sampler.sample`, KV cache).
    score(policy_params, ref_params, reward_params, samples) -> rollout dict
        ONE pass: proxy reward (reward-model head at the last token), reference log-probs and
        the sampling-time policy's log-probs (PPO's π_old, recomputed with the training forward
        so the first importance ratio is exactly 1), and the gold reward −len(response).
    update(state, rollout, key) -> (state, metrics stacked over updates)
        `lax.scan` over `reuse` epochs × (P / minibatch_prompts) minibatches of whole prompts
        (a prompt's N samples stay together: group objectives compare them); each scan step is
        `modeseek.make_train_step`'s pure step.

Rollout dict: tokens, mask, response_mask [P·N, S] (S = Lp + max_new_tokens; response_mask is 0
on the prompt), rewards / gold_rewards / proxy_rewards / ref_logps / old_logps / valid [P, N],
response_length [P, N]. `reward_source` picks what `rewards` holds: the reward model's score
("model") or the gold reward ("gold").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import modeseek
from modeseek import decoder as dec
from modeseek import sampler


def make_generate(config, *, samples_per_prompt, max_new_tokens, temperature=1.0, top_k=0,
                  top_p=1.0, eos_id=None, pad_id=0):
    def generate(params, prompt_tokens, prompt_mask, key):
        tokens = jnp.repeat(prompt_tokens, samples_per_prompt, axis=0)
        mask = jnp.repeat(prompt_mask, samples_per_prompt, axis=0)
        return sampler.sample(key, params, config, tokens, mask, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              eos_id=eos_id, pad_id=pad_id)

    return generate


def response_loss_mask(samples):
    """[B, S] mask of response tokens in concat(prompt, response)."""
    prompt_len = samples.tokens.shape[1] - samples.response_mask.shape[1]
    zeros = jnp.zeros((samples.tokens.shape[0], prompt_len), bool)
    return jnp.concatenate([zeros, samples.response_mask.astype(bool)], axis=1)


def token_logps_and_hidden(params, config, tokens, mask, loss_mask):
    logits, hidden = dec.forward(params, config, tokens, attention_mask_BxL=mask,
                                 return_hidden=True)
    return modeseek.token_logprobs(logits, tokens, loss_mask), hidden


def make_score(config, reward_config, *, samples_per_prompt, reward_source="model",
               recompute_old_logps=True):
    """The one scoring pass (see module docstring). `reward_params` is a scalar model
    ({"decoder", "head"}) for reward_source="model" and ignored for "gold".

    recompute_old_logps=False takes the sampling-time log-probs from the sampler instead of a
    policy forward (a third fewer FLOPs; objectives other than PPO only use them for the
    KL metric; with temperature ≠ 1 they are the tempered policy's)."""
    if reward_source not in ("model", "gold"):
        raise ValueError(f"reward_source must be 'model' or 'gold', got {reward_source!r}")

    def score(policy_params, ref_params, reward_params, samples):
        tokens, mask = samples.tokens, samples.mask.astype(bool)
        loss_mask = response_loss_mask(samples)
        ref_tok, _ = token_logps_and_hidden(ref_params, config, tokens, mask, loss_mask)
        if recompute_old_logps:
            old_tok, _ = token_logps_and_hidden(policy_params, config, tokens, mask, loss_mask)
            old_logps = jnp.sum(old_tok, 1)
        else:
            old_tok, old_logps = None, jnp.sum(samples.response_logps, 1)
        length = jnp.sum(samples.response_mask, axis=1).astype(jnp.float32)
        gold = -length
        if reward_source == "model":
            proxy = dec.score(reward_params, reward_config, tokens, mask)
        else:
            proxy = gold
        shape = (-1, samples_per_prompt)
        rollout = {"tokens": tokens, "mask": mask, "response_mask": loss_mask,
                   "rewards": proxy.reshape(shape), "proxy_rewards": proxy.reshape(shape),
                   "gold_rewards": gold.reshape(shape), "response_length": length.reshape(shape),
                   "ref_logps": jnp.sum(ref_tok, 1).reshape(shape),
                   "old_logps": old_logps.reshape(shape),
                   "valid": jnp.ones(length.shape, bool).reshape(shape)}
        return rollout, {"old_tok": old_tok, "ref_tok": ref_tok}

    return score


PER_PROMPT_KEYS = ("rewards", "proxy_rewards", "gold_rewards", "response_length", "ref_logps",
                   "old_logps", "valid")


def take_prompts(rollout, prompt_idx, samples_per_prompt):
    """The rows of the rollout that belong to prompts `prompt_idx` [M]."""
    rows = (prompt_idx[:, None] * samples_per_prompt + jnp.arange(samples_per_prompt)).reshape(-1)
    out = {}
    for name, value in rollout.items():
        per_prompt = name in PER_PROMPT_KEYS  # [P, N]; the rest are per sample [P·N, ...]
        out[name] = jnp.take(value, prompt_idx if per_prompt else rows, axis=0)
    return out


def make_update(train_step, *, reuse, minibatch_prompts, samples_per_prompt):
    """update(state, rollout, key): `reuse` epochs of shuffled prompt minibatches, scanned."""

    def update(state, rollout, key):
        num_prompts = rollout["rewards"].shape[0]
        if num_prompts % minibatch_prompts:
            raise ValueError(f"{num_prompts} prompts per iteration not divisible by "
                             f"minibatch_prompts={minibatch_prompts}")
        perm_key, step_key = jax.random.split(key)
        orders = jnp.stack([jax.random.permutation(jax.random.fold_in(perm_key, e), num_prompts)
                            for e in range(reuse)])
        minibatches = orders.reshape(-1, minibatch_prompts)

        def body(state, xs):
            i, idx = xs
            batch = take_prompts(rollout, idx, samples_per_prompt)
            return train_step(state, batch, jax.random.fold_in(step_key, i))

        return jax.lax.scan(body, state, (jnp.arange(minibatches.shape[0]), minibatches))

    return update


def rollout_metrics(rollout) -> dict:
    valid = rollout["valid"]
    mean = lambda x: modeseek.masked_mean(x, valid)
    return {"rollout/gold_reward": mean(rollout["gold_rewards"]),
            "rollout/proxy_reward": mean(rollout["proxy_rewards"]),
            "rollout/length": mean(rollout["response_length"]),
            "rollout/kl_to_ref": mean(rollout["old_logps"] - rollout["ref_logps"]),
            # totals as replicated scalars: the token arrays span every process's devices
            "rollout/tokens": jnp.sum(rollout["mask"]).astype(jnp.float32),
            "rollout/response_tokens": jnp.sum(rollout["response_mask"]).astype(jnp.float32)}
