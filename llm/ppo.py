"""Token-level PPO for LLMs (Ziegler et al., 2019; Ouyang et al., 2022): a value head on the
policy's trunk, per-token KL-shaped rewards, GAE, clipped policy and value losses, and the
adaptive KL controller.

Parameters are a scalar model {"decoder": policy params, "head": value head}; sampling uses
`params["decoder"]`. Response-aligned arrays are [B, T] (T = max_new_tokens): token t of the
response sits at sequence position Lp + t, its log-prob comes from the logits at Lp + t − 1,
and its value V(s_t) is the head at position Lp + t − 1 (the prefix before the token).

Per-token reward (Ziegler et al.):
    r_t = −kl_coef · (log π_old(y_t) − log π_ref(y_t))   + score(x, y) at the last token,
advantages by `modeseek.gae_advantages` (γ, λ), whitened over the batch's response tokens.
Adaptive KL: kl_coef ← kl_coef · (1 + clip(KL / target − 1, −0.2, 0.2) · samples / horizon).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import modeseek
from llm.rollout import token_logps_and_hidden
from modeseek import decoder as dec


def _response_slice(x_BxS, response_len):
    return x_BxS[:, -response_len:]


def values_and_logps(params, config, tokens, mask, loss_mask, response_len):
    """Response-aligned (token log-probs [B,T], values [B,T]) of the policy + value head."""
    token_logps, hidden = token_logps_and_hidden(params["decoder"], config, tokens, mask,
                                                 loss_mask)
    head = params["head"]
    values_BxS = hidden.astype(jnp.float32) @ head["kernel"] + head["bias"]
    # V(s_t) for response token t is read at the position before it
    values_BxT = values_BxS[:, -response_len - 1:-1]
    return _response_slice(token_logps, response_len), values_BxT


def add_advantages(rollout, extras, params, config, kl_coef, *, gamma=1.0, lam=0.95):
    """Adds per-token old/ref log-probs, old values, KL-shaped rewards, advantages, returns."""
    response_len = rollout["tokens"].shape[1] - extras["prompt_len"]
    tok_mask = _response_slice(rollout["response_mask"], response_len).astype(jnp.float32)
    old_tok = _response_slice(extras["old_tok"], response_len)
    ref_tok = _response_slice(extras["ref_tok"], response_len)
    _, old_values = values_and_logps(params, config, rollout["tokens"], rollout["mask"],
                                     rollout["response_mask"], response_len)
    kl_tok = (old_tok - ref_tok) * tok_mask
    last = jnp.maximum(jnp.sum(tok_mask, 1).astype(jnp.int32) - 1, 0)
    score = rollout["rewards"].reshape(-1)
    token_rewards = -kl_coef * kl_tok + jax.nn.one_hot(last, response_len) * score[:, None]
    advantages, returns = modeseek.gae_advantages(token_rewards, old_values, tok_mask,
                                                  gamma=gamma, lam=lam)
    mean = modeseek.masked_mean(advantages, tok_mask)
    std = jnp.sqrt(modeseek.masked_mean(jnp.square(advantages - mean), tok_mask))
    advantages = jnp.where(tok_mask > 0, (advantages - mean) / (std + 1e-8), 0.0)
    return {**rollout, "old_tok": old_tok, "old_values": old_values * tok_mask,
            "advantages": advantages, "returns": returns, "tok_mask": tok_mask,
            "kl_per_sample": jnp.sum(kl_tok, 1)}


PER_SAMPLE_KEYS = ("old_tok", "old_values", "advantages", "returns", "tok_mask", "kl_per_sample")


def make_ppo_loss(config, *, clip_eps=0.2, value_clip=0.2, vf_coef=0.1):
    def loss_fn(params, batch, key):
        del key
        response_len = batch["tok_mask"].shape[1]
        logps, values = values_and_logps(params, config, batch["tokens"], batch["mask"],
                                         batch["response_mask"], response_len)
        m = batch["tok_mask"]
        pg = modeseek.masked_mean(
            modeseek.ppo_clip_loss(logps, batch["old_tok"], batch["advantages"],
                                   clip_eps=clip_eps), m)
        vf = modeseek.masked_mean(
            modeseek.clipped_value_loss(values, batch["old_values"], batch["returns"],
                                        clip_eps=value_clip), m)
        clipfrac = modeseek.masked_mean(
            modeseek.ppo_clip_fraction(logps, batch["old_tok"], clip_eps=clip_eps), m)
        return pg + vf_coef * vf, {"ppo/policy_loss": pg, "ppo/value_loss": vf,
                                   "ppo/clip_fraction": clipfrac}

    return loss_fn


def init_value_head(key, config: dec.DecoderConfig):
    """Zero value head: V ≡ 0 at the start, so early advantages are the shaped returns."""
    head = dec.init_scalar_head(key, config)
    return jax.tree.map(jnp.zeros_like, head)


def adapt_kl_coef(kl_coef: float, observed_kl: float, *, target: float | None, horizon: int,
                  num_samples: int) -> float:
    """Ziegler et al.'s proportional controller; target None keeps the coefficient fixed."""
    if target is None or target <= 0:
        return kl_coef
    error = float(np.clip(observed_kl / target - 1.0, -0.2, 0.2))
    return kl_coef * (1.0 + error * num_samples / horizon)
