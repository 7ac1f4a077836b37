"""Group objectives: every algorithm's loss on P prompts × N scored samples.

One signature serves every tier and algorithm:

    objective(logps, batch, hparams) -> scalar loss

- `logps` [P, N]: sequence log-probs of the samples under the policy being trained (carries
  the gradient);
- `batch`: mapping with `rewards` [P, N], `ref_logps` [P, N] (reference policy),
  `old_logps` [P, N] (the policy at sampling time; PPO's π_old) and optionally `mask` [P, N]
  (valid samples);
- `hparams`: mapping of numeric hyperparameters (traceable, so sweeps vmap over them); each
  objective reads exactly the names its taxonomy record `needs` (no defaults here: fill them
  with `modeseek.resolve_hparams`, the one home of defaults and validation).

Reductions: pairwise objectives average over **all valid pairs in the batch**; per-prompt
objectives (Best-of-N, RWR) average over prompts; per-sample ones (REINFORCE, PPO) over valid
samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from modeseek import advantages as adv
from modeseek.contrastive import dpo_loss, ipo_loss, slic_hinge_loss
from modeseek.likelihood import best_of_n_loss, rwr_loss
from modeseek.logprobs import masked_mean
from modeseek.pairs import pairwise_loss, ranked_pairs_mask
from modeseek.policy_gradient import ppo_clip_loss, reinforce_loss


def _mask(batch):
    return batch.get("mask")


def _pairs(batch, hparams):
    return ranked_pairs_mask(batch["rewards"], threshold=hparams["threshold"],
                             where=_mask(batch))


def pair_counts(pair_mask):
    """(wins_i, losses_i, total): how often each sample is winner/loser among masked pairs."""
    wins = jnp.sum(pair_mask, axis=-1).astype(jnp.float32)
    losses = jnp.sum(pair_mask, axis=-2).astype(jnp.float32)
    return wins, losses, jnp.maximum(jnp.sum(wins), 1.0)


def pair_logratio_metrics(logps, ref_logps, pair_mask):
    """Mean log π − log π_ref of winners and of losers over the masked pairs, and the count."""
    wins, losses, total = pair_counts(pair_mask)
    ratio = logps - ref_logps
    return {
        "logratio/chosen": jnp.sum(wins * ratio) / total,
        "logratio/rejected": jnp.sum(losses * ratio) / total,
        "num_pairs": jnp.sum(wins),
    }


def _contrastive(loss_fn, hparam_names):
    def objective(logps, batch, hparams):
        pairs = _pairs(batch, hparams)
        kwargs = {name: hparams[name] for name in hparam_names}
        total, count = pairwise_loss(loss_fn, logps, batch["ref_logps"], pairs, **kwargs)
        return jnp.sum(total) / jnp.maximum(jnp.sum(count), 1)

    return objective


dpo_objective = _contrastive(dpo_loss, ("beta", "label_smoothing"))
dpo_objective.__doc__ = "DPO on all ranked pairs (gap > threshold), mean over pairs."
ipo_objective = _contrastive(ipo_loss, ("tau",))
ipo_objective.__doc__ = "IPO on all ranked pairs (gap > threshold), mean over pairs."
slic_objective = _contrastive(slic_hinge_loss, ("beta",))
slic_objective.__doc__ = "SLiC-hinge on all ranked pairs, mean over pairs."


def pref_ft_objective(logps, batch, hparams):
    """Pref-FT: −log π(y_w) for the winner of every ranked pair (no negative gradient).

    Uses the same pairs as DPO, so Pref-FT vs DPO isolates the negative gradient.
    """
    wins, _, total = pair_counts(_pairs(batch, hparams))
    return -jnp.sum(wins * logps) / total


def best_of_n_objective(logps, batch, hparams, *, top_k=1, negative=None, negative_clip=None):
    """Best-of-N (filtered BC), optionally with the negative term (weight
    hparams["negative_coef"]); mean over prompts."""
    coef = hparams["negative_coef"] if negative is not None else 0.0
    per_prompt = best_of_n_loss(
        logps, batch["rewards"], top_k=top_k, negative=negative, negative_coef=coef,
        ref_logps=batch["ref_logps"], negative_clip=negative_clip, where=_mask(batch))
    return jnp.mean(per_prompt)


def rwr_objective(logps, batch, hparams, *, normalize="zscore"):
    """Reward-weighted regression with per-prompt z-scored rewards; mean over prompts."""
    return jnp.mean(rwr_loss(logps, batch["rewards"], beta=hparams["rwr_beta"],
                             normalize=normalize, weight_clip=hparams["weight_clip"],
                             where=_mask(batch)))


ADVANTAGES = {
    "zscore": adv.zscore_advantages,
    "mean": adv.mean_baseline_advantages,
    "rloo": adv.rloo_advantages,
}


def reinforce_objective(logps, batch, hparams, *, baseline="zscore", nonnegative=False):
    """REINFORCE with a per-prompt baseline; `nonnegative` shifts advantages to be ≥ 0 (the
    no-negative-gradient ablation)."""
    a = ADVANTAGES[baseline](batch["rewards"], where=_mask(batch))
    if nonnegative:
        a = adv.nonnegative_advantages(a, where=_mask(batch))
    return masked_mean(reinforce_loss(logps, a), _mask(batch))


def ppo_objective(logps, batch, hparams):
    """PPO on one-step responses (bandits): the one-token case of `modeseek.ppo`'s token-level
    PPO without a value function. Clipped surrogate against π_old, with the KL penalty to π_ref
    folded into the reward (r − kl_coef · (log π_old − log π_ref), the usual RLHF shaping) and
    per-prompt z-scored advantages standing in for the value baseline."""
    kl = jax.lax.stop_gradient(batch["old_logps"] - batch["ref_logps"])
    shaped = batch["rewards"] - hparams["kl_coef"] * kl
    a = adv.zscore_advantages(shaped, where=_mask(batch))
    loss = ppo_clip_loss(logps, batch["old_logps"], a, clip_eps=hparams["clip_eps"])
    return masked_mean(loss, _mask(batch))
