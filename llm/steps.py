"""Loss functions of the LLM stages, written as `loss_fn(params, batch, key) -> (loss, metrics)`
for `modeseek.make_train_step`, so every stage uses the one optax pipeline and the same
modeseek losses as the bandit and synthetic tiers.

Sequences are `concat(prompt, response)`: the loader's prompts are left-padded and responses
right-padded, and the sampler's outputs have the same layout, so one helper scores both. The
loss mask covers response tokens only (never prompt or padding); log-probs follow
`modeseek.token_logprobs` (logits at t−1 predict token t; sequence log-prob = masked sum).

Batches (device arrays, batch dimension first):
  offline pairs  prompt_tokens [B,P], prompt_mask, chosen_tokens/rejected_tokens [B,T], masks,
                 and for preference stages ref_logps [B,2] (chosen, rejected) from the cache;
  on-policy      a `modeseek.Rollout` [P, N, ...]: its loss is `modeseek.make_rollout_loss`
                 (llm.onpolicy), the same one the synthetic tier trains with.
"""

from __future__ import annotations

import jax.numpy as jnp

import modeseek
from modeseek import decoder as dec
from modeseek.taxonomy import get_algorithm

PAIR_KEYS = ("prompt_tokens", "prompt_mask", "chosen_tokens", "chosen_mask", "rejected_tokens",
             "rejected_mask")


def join_pair(batch, which: str):
    """(tokens, attention mask, loss mask) [B, P+T] of prompt + `which` response."""
    tokens = jnp.concatenate([batch["prompt_tokens"], batch[f"{which}_tokens"]], axis=1)
    prompt_mask = batch["prompt_mask"].astype(bool)
    response_mask = batch[f"{which}_mask"].astype(bool)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    loss_mask = jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask], axis=1)
    return tokens, mask, loss_mask


def stacked_pairs(batch):
    """Chosen rows then rejected rows, [2B, P+T] each: one forward pass scores both."""
    parts = [join_pair(batch, w) for w in ("chosen", "rejected")]
    return tuple(jnp.concatenate([a, b], axis=0) for a, b in zip(*parts, strict=True))


def sequence_logps(params, config, tokens, mask, loss_mask):
    """[B] Σ over loss_mask tokens of log π(token | prefix)."""
    logits = dec.forward(params, config, tokens, attention_mask_BxL=mask)
    return modeseek.sequence_logprobs(logits, tokens, loss_mask)


def pair_logps(params, config, batch):
    """[B, 2] sequence log-probs of (chosen, rejected)."""
    logps = sequence_logps(params, config, *stacked_pairs(batch))
    return jnp.stack(jnp.split(logps, 2), axis=1)


def make_sft_loss(config):
    """Token-mean NLL of the chosen response (SFT on the preferred data)."""

    def loss_fn(params, batch, key):
        del key
        tokens, mask, loss_mask = join_pair(batch, "chosen")
        logits = dec.forward(params, config, tokens, attention_mask_BxL=mask)
        token_logps = modeseek.token_logprobs(logits, tokens, loss_mask)
        count = jnp.maximum(jnp.sum(loss_mask), 1)
        nll = -jnp.sum(token_logps) / count
        return nll, {"nll_per_token": nll, "tokens": jnp.sum(loss_mask)}

    return loss_fn


def reward_scores(params, config, batch):
    """[B, 2] reward-model scores of (chosen, rejected) at each sequence's last real token."""
    tokens, mask, _ = stacked_pairs(batch)
    scores = dec.score(params, config, tokens, mask)
    return jnp.stack(jnp.split(scores, 2), axis=1)


def make_reward_model_loss(config, *, label_smoothing: float = 0.0):
    """Bradley–Terry loss on (chosen, rejected) scores; accuracy = P(s_chosen > s_rejected)."""

    def loss_fn(params, batch, key):
        del key
        scores = reward_scores(params, config, batch)
        loss = modeseek.bradley_terry_loss(scores[:, 0], scores[:, 1],
                                           label_smoothing=label_smoothing)
        return jnp.mean(loss), {"accuracy": jnp.mean(scores[:, 0] > scores[:, 1]),
                                "margin": jnp.mean(scores[:, 0] - scores[:, 1])}

    return loss_fn


def objective_hparams(algorithm: str, overrides) -> dict:
    """The algorithm's hyperparameters: `modeseek.resolve_hparams(overrides)` (the taxonomy is
    the one home of defaults and validation); unknown algorithms raise, listing the known."""
    get_algorithm(algorithm)
    return modeseek.resolve_hparams(overrides)


def make_offline_loss(config, algorithm: str, hparams):
    """Taxonomy objective on offline pairs viewed as P = B prompts × N = 2 samples, with
    reward 1 for the chosen and 0 for the rejected response (so the ranked pair is the data's)."""
    objective = get_algorithm(algorithm).objective

    def loss_fn(params, batch, key):
        del key
        logps = pair_logps(params, config, batch)
        rewards = jnp.broadcast_to(jnp.array([1.0, 0.0]), logps.shape)
        group = {"rewards": rewards, "ref_logps": batch["ref_logps"],
                 "old_logps": batch["ref_logps"], "mask": jnp.ones(logps.shape, bool)}
        metrics = modeseek.preference_metrics(logps[:, 0], logps[:, 1], batch["ref_logps"][:, 0],
                                              batch["ref_logps"][:, 1], beta=1.0)
        return objective(logps, group, hparams), metrics

    return loss_fn
