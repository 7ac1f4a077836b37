"""One on-policy iteration (Algorithm 1 of PAPER.md) as pure, jit-able pieces that every
transformer tier calls; tiers keep only their host loop, data, rewards and sharding.

    samples = generate(key, policy, params, prompt_tokens [P, Lp], prompt_mask, sampling=...,
                       samples_per_prompt=N)                     → SampleOutput, P·N rows
    rollout = score_rollout(policy, params, ref_params, samples, rewards [P, N])
                                                                 → Rollout, every leaf [P, N, …]
    rollout = add_ppo_targets(rollout, hparams, kl_coef)         (token-level algorithms only)
    loss_fn = make_rollout_loss(algorithm, policy, sampling, hparams)
    update  = make_update(modeseek.make_train_step(loss_fn, optimizer), reuse=T,
                          minibatch_prompts=M)
    state, metrics = update(state, rollout, key)    T passes over shuffled minibatches of M
                                                    prompts (a prompt's N samples stay together)
    iteration = make_iteration(policy, sampling, samples_per_prompt=N, score=..., update=update)
                                                    all three phases as one program

Conventions: sequences are concat(prompt, response), prompts left-padded, responses
right-padded (S = Lp + max_new_tokens); per-token arrays are aligned with `tokens` (position t
holds token t's log-prob, from the logits at t − 1); sequence log-probs are masked sums over
response tokens (`modeseek.sequence_logprobs`). The behaviour policy π_old is the distribution
the sampler actually drew from (after temperature, top-k, top-p): the rollout keeps its
per-token log-probs and the packed sampling mask, and the training side recomputes π_θ through
the same transform (`modeseek.sampled_token_logprobs`) for importance ratios; every objective
that compares with the reference uses π_θ itself (temperature 1, full support).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from modeseek import decoder as dec
from modeseek import ppo
from modeseek.logprobs import masked_mean, sampled_token_logprobs, token_logprobs
from modeseek.sampler import SampleOutput, sample
from modeseek.taxonomy import get_algorithm

VALUE_KINDS = ("none", "shared", "critic")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How responses are drawn (static: changes the compiled program). eos_ids: the one EOS
    set used by sampling, training and evaluation."""
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0


@dataclasses.dataclass(frozen=True)
class PolicyModel:
    """The policy decoder and, for token-level algorithms, its value function.

    value="none":   params are the decoder's parameters;
    value="shared": {"decoder", "head"}: a scalar head on the policy's trunk (one forward gives
                    logits and values; the head starts at zero, so V ≡ 0 at first);
    value="critic": {"decoder", "critic": {"decoder", "head"}}: a separate value model (twice
                    the forward cost; policy and value gradients do not interact).
    """
    config: dec.DecoderConfig
    value: str = "none"

    def __post_init__(self):
        if self.value not in VALUE_KINDS:
            raise ValueError(f"value must be one of {VALUE_KINDS}, got {self.value!r}")

    def decoder_params(self, params):
        """The policy decoder's parameters (what the sampler and evaluation use)."""
        return params if self.value == "none" else params["decoder"]

    def init(self, key, decoder_params):
        """Parameters of this model starting from `decoder_params` (and the critic from the
        same decoder, with a random head drawn from `key`)."""
        if self.value == "none":
            return decoder_params
        head = dec.init_scalar_head(key, self.config)
        if self.value == "shared":
            return {"decoder": decoder_params, "head": jax.tree.map(jnp.zeros_like, head)}
        return {"decoder": decoder_params, "critic": {"decoder": decoder_params, "head": head}}

    def apply(self, params, tokens_BxS, mask_BxS):
        """(logits [B, S, V], values [B, S] aligned with tokens — V(prefix before token t) at
        position t, 0 at t = 0 — or None without a value function)."""
        if self.value == "none":
            return dec.forward(params, self.config, tokens_BxS, attention_mask_BxL=mask_BxS), None
        if self.value == "shared":
            logits, hidden = dec.forward(params["decoder"], self.config, tokens_BxS,
                                         attention_mask_BxL=mask_BxS, return_hidden=True)
            head = params["head"]
            values = hidden.astype(jnp.float32) @ head["kernel"] + head["bias"]
        else:
            logits = dec.forward(params["decoder"], self.config, tokens_BxS,
                                 attention_mask_BxL=mask_BxS)
            values = dec.token_values(params["critic"], self.config, tokens_BxS, mask_BxS)
        return logits, jnp.concatenate([jnp.zeros_like(values[:, :1]), values[:, :-1]], 1)


class Rollout(NamedTuple):
    """A scored on-policy batch; every leaf is laid out [P prompts, N samples, …]."""
    tokens: jax.Array            # [P, N, S] int32: prompt + response
    attention_mask: jax.Array    # [P, N, S] bool
    response_mask: jax.Array     # [P, N, S] bool: response tokens, EOS included
    sampling_logps: jax.Array    # [P, N, S] log π_old(token) under the sampled distribution
    ref_token_logps: jax.Array   # [P, N, S] log π_ref(token), 0 off the response
    rewards: jax.Array           # [P, N] the training (proxy) reward
    lengths: jax.Array           # [P, N] response tokens (EOS included), float32
    valid: jax.Array             # [P, N] bool: samples that count
    keep_bits: Any = None        # [P, N, S, W] uint32 sampling mask, or None (no truncation)
    values: Any = None           # [P, N, S] V_old aligned with tokens (token-level only)
    advantages: Any = None       # [P, N, S] whitened GAE advantages (token-level only)
    returns: Any = None          # [P, N, S] GAE returns (token-level only)

    @property
    def old_logps(self):
        """[P, N] sequence log-probs under the sampled distribution."""
        return jnp.sum(self.sampling_logps, -1)

    @property
    def ref_logps(self):
        """[P, N] sequence log-probs under the reference."""
        return jnp.sum(self.ref_token_logps, -1)


def generate(key, policy: PolicyModel, params, prompt_tokens, prompt_mask, *,
             sampling: Sampling, samples_per_prompt: int) -> SampleOutput:
    """N samples for each of P prompts, rows prompt-major (row p·N + i is sample i of p)."""
    chex.assert_rank([prompt_tokens, prompt_mask], 2)
    tokens = jnp.repeat(prompt_tokens, samples_per_prompt, axis=0)
    mask = jnp.repeat(prompt_mask, samples_per_prompt, axis=0)
    return sample(key, policy.decoder_params(params), policy.config, tokens, mask,
                  max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                  top_k=sampling.top_k, top_p=sampling.top_p,
                  eos_id=tuple(sampling.eos_ids) or None, pad_id=sampling.pad_id)


def _aligned(samples: SampleOutput, response_x, fill=0):
    """Response-aligned [B, T, …] → token-aligned [B, S, …], `fill` on the prompt."""
    B, S = samples.tokens.shape
    prompt = jnp.full((B, S - response_x.shape[1]) + response_x.shape[2:], fill,
                      response_x.dtype)
    return jnp.concatenate([prompt, response_x], axis=1)


def score_rollout(policy: PolicyModel, params, ref_params, samples: SampleOutput, rewards,
                  *, valid=None) -> Rollout:
    """The one scoring pass: reference log-probs (one forward), the sampler's behaviour
    log-probs and mask, old values (one policy forward, token-level algorithms only), rewards
    [P, N] computed by the caller (any reward: a model, a rule, a host function)."""
    chex.assert_rank(rewards, 2)
    P, N = rewards.shape
    chex.assert_shape(samples.tokens, (P * N, None))
    tokens, mask = samples.tokens, samples.mask.astype(bool)
    response_mask = _aligned(samples, samples.response_mask.astype(bool), False)
    ref_logits = dec.forward(ref_params, policy.config, tokens, attention_mask_BxL=mask)
    ref_tok = token_logprobs(ref_logits, tokens, response_mask)
    values = None
    if policy.value != "none":
        values = policy.apply(params, tokens, mask)[1] * response_mask
    keep = None
    if samples.response_keep_bits is not None:
        keep = _aligned(samples, samples.response_keep_bits)
    rows = Rollout(tokens=tokens, attention_mask=mask, response_mask=response_mask,
                   sampling_logps=_aligned(samples, samples.response_sampling_logps),
                   ref_token_logps=ref_tok, rewards=rewards.reshape(-1),
                   lengths=jnp.sum(samples.response_mask, 1).astype(jnp.float32),
                   valid=(jnp.ones(P * N, bool) if valid is None else valid.reshape(-1)),
                   keep_bits=keep, values=values)
    return jax.tree.map(lambda x: x.reshape((P, N) + x.shape[1:]), rows)


def add_ppo_targets(rollout: Rollout, hparams, kl_coef) -> tuple[Rollout, jax.Array]:
    """(rollout with PPO's advantages and returns, per-sample KL [P, N]); see `modeseek.ppo`."""
    adv, returns, kl = ppo.ppo_targets(
        rollout.rewards, rollout.sampling_logps, rollout.ref_token_logps, rollout.values,
        rollout.response_mask, kl_coef=kl_coef, gamma=hparams["gamma"],
        gae_lambda=hparams["gae_lambda"])
    return rollout._replace(advantages=adv, returns=returns), kl


def rollout_metrics(rollout: Rollout) -> dict:
    """Means over valid samples: training reward, length, KL(π_old ‖ π_ref) estimate, and
    token counts (totals as scalars)."""
    mean = lambda x: masked_mean(x, rollout.valid)
    return {"rollout/proxy_reward": mean(rollout.rewards),
            "rollout/length": mean(rollout.lengths),
            "rollout/kl_to_ref": mean(rollout.old_logps - rollout.ref_logps),
            "rollout/tokens": jnp.sum(rollout.attention_mask).astype(jnp.float32),
            "rollout/response_tokens": jnp.sum(rollout.response_mask).astype(jnp.float32)}


def make_rollout_loss(algorithm: str, policy: PolicyModel, sampling: Sampling, hparams):
    """loss_fn(params, minibatch: Rollout, key) -> (loss, metrics) for `algorithm`.

    Sequence-level algorithms get the taxonomy's group objective on [M, N] sequence log-probs
    of π_θ; token-level ones (a record with `token_objective`) get per-token log-probs of π_θ
    through the sampling transform and the value function's per-token values. `hparams` may be
    traced (sweeps): it is closed over, never branched on."""
    alg = get_algorithm(algorithm)
    if alg.token_level and policy.value == "none":
        raise ValueError(f"{algorithm} trains a value function: use PolicyModel(value='shared' "
                         "or 'critic')")

    def loss_fn(params, mb: Rollout, key):
        del key
        M, N, S = mb.tokens.shape
        flat = lambda x: x.reshape((M * N,) + x.shape[2:])
        logits, values = policy.apply(params, flat(mb.tokens), flat(mb.attention_mask))
        if alg.token_level:
            keep = None if mb.keep_bits is None else flat(mb.keep_bits)
            logps = sampled_token_logprobs(logits, flat(mb.tokens), flat(mb.response_mask),
                                           temperature=sampling.temperature, keep_bits=keep)
            return alg.token_objective(logps.reshape(M, N, S), values.reshape(M, N, S), mb,
                                       hparams)
        logps = jnp.sum(token_logprobs(logits, flat(mb.tokens), flat(mb.response_mask)),
                        -1).reshape(M, N)
        group = {"rewards": mb.rewards, "ref_logps": mb.ref_logps, "old_logps": mb.old_logps,
                 "mask": mb.valid}
        loss = alg.objective(logps, group, hparams)
        return loss, {"logratio/mean": masked_mean(logps - mb.ref_logps, mb.valid),
                      "logps/mean": masked_mean(logps, mb.valid)}

    return loss_fn


def minibatch_orders(key, num_prompts: int, *, reuse: int, minibatch_prompts: int):
    """[reuse · P / M, M] prompt indices: one fresh permutation of the P prompts per pass."""
    if num_prompts % minibatch_prompts:
        raise ValueError(f"{num_prompts} prompts per iteration not divisible by "
                         f"minibatch_prompts={minibatch_prompts}")
    orders = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), num_prompts)
                        for e in range(reuse)])
    return orders.reshape(-1, minibatch_prompts)


def make_update(train_step, *, reuse: int, minibatch_prompts: int):
    """update(state, rollout, key) -> (state, metrics stacked over the reuse·P/M steps): a
    `lax.scan` of `train_step` over prompt minibatches (`minibatch_orders`), step i with key
    fold_in(step_key, i)."""

    def update(state, rollout: Rollout, key):
        perm_key, step_key = jax.random.split(key)
        minibatches = minibatch_orders(perm_key, rollout.rewards.shape[0], reuse=reuse,
                                       minibatch_prompts=minibatch_prompts)

        def body(state, xs):
            i, idx = xs
            mb = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), rollout)
            return train_step(state, mb, jax.random.fold_in(step_key, i))

        return jax.lax.scan(body, state, (jnp.arange(minibatches.shape[0]), minibatches))

    return update


def _nan_like(shape_dtype):
    fill = jnp.nan if jnp.issubdtype(shape_dtype.dtype, jnp.inexact) else 0
    return jnp.full(shape_dtype.shape, fill, shape_dtype.dtype)


def make_iteration(policy: PolicyModel, sampling: Sampling, *, samples_per_prompt: int, score,
                   update):
    """One whole on-policy iteration as one traced function (jit it once: no host round-trip
    between sampling, scoring and the update):

        iteration(state, prompt_tokens [P, Lp], prompt_mask, key, *score_args)
            -> (state, {"update": update metrics, "rollout": score metrics,
                        "scores": scores, "finite": bool scalar})

    with `score(params, samples, *score_args) -> (rollout, score_metrics, scores)` (scores:
    {label: [P, N] float32}, every reward computed inside) and `update` from `make_update`.
    Keys follow the phase-by-phase loop (sampling fold_in(key, 0), update fold_in(key, 1)), so
    both give the same iteration. The update runs only when every score is finite (`finite`);
    otherwise the state comes back unchanged and the update metrics are NaN, so a caller can
    stop on bad rewards with nothing trained on them (the output is a (state, metrics) pair, as
    a train step's, so the same jit helpers serve it). Shapes are fixed: responses are scored
    and trained at their full max_new_tokens (no `trim_responses`)."""

    def iteration(state, prompt_tokens, prompt_mask, key, *score_args):
        samples = generate(jax.random.fold_in(key, 0), policy, state.params, prompt_tokens,
                           prompt_mask, sampling=sampling, samples_per_prompt=samples_per_prompt)
        rollout, score_metrics, scores = score(state.params, samples, *score_args)
        finite = jnp.array(True)
        for values in scores.values():
            finite &= jnp.all(jnp.isfinite(values))
        update_key = jax.random.fold_in(key, 1)
        skipped = jax.tree.map(_nan_like, jax.eval_shape(update, state, rollout, update_key)[1])
        state, update_metrics = jax.lax.cond(
            finite, lambda: update(state, rollout, update_key), lambda: (state, skipped))
        return state, {"update": update_metrics, "rollout": score_metrics, "scores": scores,
                       "finite": finite}

    return iteration
