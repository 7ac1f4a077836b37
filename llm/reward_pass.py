"""Rewards inside the on-policy iteration and evaluation (`llm.rewards` builds them).

A reward with a jit-able device form — a length rule (`response_fn`) or a reward model reading
the policy's token ids (`score_fn`) — runs inside the jitted scoring pass; a reward that reads
decoded text (rules on text, user functions, retokenizing reward models) runs on the host
between sampling and scoring, and its wall time is reported. Every score array is checked on
the host (`llm.reward_types.check_scores`): wrong size, NaN or inf stop the run with a
`RewardError` naming the reward, before any checkpoint of that iteration is written.

Labels: "proxy" is the training reward, "gold/<name>" the evaluation-only gold rewards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llm.reward_types import Reward, RewardInputs, check_scores

PROXY = "proxy"


def labelled(proxy: Reward | None, golds: dict) -> dict:
    """{"proxy": proxy, "gold/<name>": gold, ...} (the proxy left out when None)."""
    out = {} if proxy is None else {PROXY: proxy}
    out.update({f"gold/{name}": r for name, r in golds.items()})
    return out


def on_device(reward: Reward) -> bool:
    """Whether the reward has a jit-able form over the sampler's tokens."""
    return reward.response_fn is not None or (reward.score_fn is not None
                                              and not reward.needs_text)


def split(rewards: dict) -> tuple[dict, dict]:
    """(device rewards, host rewards), each {label: Reward}."""
    return ({k: r for k, r in rewards.items() if on_device(r)},
            {k: r for k, r in rewards.items() if not on_device(r)})


def device_params(rewards: dict) -> dict:
    """{label: params} of the device rewards that have parameters (jit arguments)."""
    return {k: r.params for k, r in rewards.items() if r.response_fn is None}


def device_scores(rewards: dict, params: dict, samples, shape) -> dict:
    """{label: [P, N] float32} of the device rewards, jit-able (samples: P·N rows)."""
    out = {}
    for label, r in rewards.items():
        if r.response_fn is not None:
            scores = r.response_fn(samples.response_mask)
        else:
            scores = r.score_fn(params[label], samples.tokens, samples.mask)
        out[label] = jnp.asarray(scores, jnp.float32).reshape(shape)
    return out


def host_scores(rewards: dict, samples, shape) -> tuple[dict, float]:
    """({label: [P, N] float32}, seconds) of the host rewards. Prompts come from the samples'
    first N-th rows (the sampler's output is replicated, so every process can read it)."""
    if not rewards:
        return {}, 0.0
    P, N = shape
    tokens, mask, resp, resp_mask = jax.device_get(
        (samples.tokens, samples.mask, samples.response_tokens, samples.response_mask))
    Lp = tokens.shape[1] - resp.shape[1]
    inputs = RewardInputs(prompt_tokens=np.asarray(tokens[::N, :Lp]),
                          prompt_mask=np.asarray(mask[::N, :Lp], bool),
                          response_tokens=np.asarray(resp).reshape(P, N, -1),
                          response_mask=np.asarray(resp_mask, bool).reshape(P, N, -1))
    out = {label: r(inputs) for label, r in rewards.items()}
    return out, float(sum(r.last_seconds for r in rewards.values()))


def check_all(rewards: dict, scores: dict, shape) -> None:
    """RewardError naming the reward whose scores have the wrong size or NaN/inf."""
    host = jax.device_get(scores)
    for label, values in host.items():
        check_scores(rewards[label].name, values, tuple(shape))
