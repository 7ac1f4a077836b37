"""One run of Algorithm 1 (PAPER.md §2) with a small decoder, as pure jitted phases.

Each iteration:
  sample  B/C prompts from the task's pool, C responses each from the current policy
          (`modeseek.sample`, temperature 1, fixed shapes, exits once every row emitted EOS);
  score   training rewards (proxy RM score or the exact bump), gold metrics, sequence log-probs
          under π_ref, π_old = the sampler's log-probs (PPO: recomputed, plus values and GAE);
  update  T passes over the batch in minibatches of M prompts (on-policy), or T steps on
          random minibatches of the offline preference set (offline algorithms; the sampled
          batch then only measures the policy).
Sequence-level algorithms use the taxonomy's group objectives (`modeseek.ALGORITHMS`) on
[M prompts, C samples] of sequence log-probs Σ_t m_t log π(y_t | y_<t); offline pairs are
[M, 2] with rewards (1, 0). PPO is token-level: per response token t

    r_t = −kl_coef · (log π_old − log π_ref)_t  (+ proxy score at the last token),
    A, R = GAE(r, V_old; γ = 1, λ), A whitened over the batch,
    loss = mean_t max(−A ρ, −A clip(ρ, 1 ± ε)) + vf_coef · mean_t ½ max((V − R)², (V_clip − R)²)

with ρ = π/π_old and a separate value model (the decoder with a scalar head, started from
π_ref). Metric row i describes the policy after i iterations (row 0 = the reference).

`make_train(setup) -> (init, chunk)`: `init(key, task) -> carry`, `chunk(carry, task) ->
(carry, metrics [K])` runs K iterations in one `lax.scan`; drivers jit(vmap) over seeds. All
shapes come from the frozen `Setup`, so each algorithm compiles once for every task that
shares its shapes (the three length tasks do).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import modeseek
from modeseek import decoder as dec
from modeseek.sampler import sample
from synthetic import tasks

SUPPORTED = ("onpolicy_dpo", "onpolicy_ipo", "onpolicy_bofn", "onpolicy_rwr", "reinforce",
             "rloo", "ppo", "offline_dpo", "offline_ipo", "pref_ft")
PPO_DEFAULTS = {"kl_coef": 0.05, "clip_eps": 0.2, "vf_coef": 0.1, "gae_lambda": 0.95,
                "value_clip": 0.2}


@dataclasses.dataclass(frozen=True)
class Setup:
    algorithm: str
    model: dec.DecoderConfig
    prompt_len: int
    max_new_tokens: int
    eos_id: int | None
    reward: str = "proxy"   # "proxy" (RM score) | "bump" (exact) | "length" (−length, benchmark)
    prompts_per_iteration: int = 8   # B/C
    samples_per_prompt: int = 4      # C
    minibatch_prompts: int = 8       # M
    reuse: int = 2                   # T
    offline_pairs: int = 16          # pairs per offline gradient step
    iterations_per_chunk: int = 10
    learning_rate: float = 1e-3
    hparams: tuple = ()              # sorted (name, value) pairs, hashable

    @property
    def hp(self) -> dict:
        return {**modeseek.DEFAULT_HPARAMS, **PPO_DEFAULTS, **dict(self.hparams)}

    @property
    def on_policy(self) -> bool:
        return modeseek.get_algorithm(self.algorithm).on_policy

    @property
    def steps_per_iteration(self) -> int:
        if not self.on_policy:
            return self.reuse
        return self.reuse * (self.prompts_per_iteration // self.minibatch_prompts)


class TaskData(NamedTuple):
    """Traced task inputs (so tasks sharing shapes share one compiled program)."""
    prompts: jax.Array          # [K, P] pool
    ref_params: Any
    rm_params: Any              # scalar model, or None for the bump reward
    offline: dict               # prompts [Q, P], chosen/rejected [Q, T] + masks
    mode: jax.Array             # gold mode length (length tasks)
    gold_is_mode: jax.Array     # bool: gold = −|len − mode| instead of −len
    peak: jax.Array             # bump peak (token bandit)


def _forward_logps(params, config, tokens, attn, loss_mask):
    logits = dec.forward(params, config, tokens, attention_mask_BxL=attn)
    return modeseek.token_logprobs(logits, tokens, loss_mask)


def init_params(setup: Setup, key, ref_params):
    if setup.algorithm != "ppo":
        return ref_params
    head = dec.init_scalar_head(key, setup.model)
    return {"policy": ref_params, "value": {"decoder": ref_params, "head": head}}


def policy_params(setup: Setup, params):
    return params["policy"] if setup.algorithm == "ppo" else params


def sample_phase(setup: Setup, params, task: TaskData, key):
    """C responses for each of B/C random prompts: SampleOutput with B = (B/C)·C rows."""
    k_idx, k_sample = jax.random.split(key)
    idx = jax.random.randint(k_idx, (setup.prompts_per_iteration,), 0, task.prompts.shape[0])
    prompts = jnp.repeat(task.prompts[idx], setup.samples_per_prompt, axis=0)
    return sample(k_sample, policy_params(setup, params), setup.model, prompts,
                  jnp.ones_like(prompts), max_new_tokens=setup.max_new_tokens,
                  eos_id=setup.eos_id, pad_id=tasks.PAD)


def score_phase(setup: Setup, params, task: TaskData, out):
    """Rewards, gold metrics, reference/old log-probs; arrays reshaped to [B/C, C, ...]."""
    cfg, P = setup.model, setup.prompt_len
    tokens, attn = out.tokens, out.mask
    loss_mask = jnp.concatenate([jnp.zeros_like(attn[:, :P]), out.response_mask], 1)
    lengths = tasks.response_lengths(out.response_tokens, out.response_mask,
                                     -1 if setup.eos_id is None else setup.eos_id)
    lengths = lengths.astype(jnp.float32)
    if setup.reward == "proxy":
        rewards = dec.score(task.rm_params, cfg, tokens, attn)
    elif setup.reward == "bump":
        rewards = tasks.bump_reward(out.response_tokens, out.response_mask, task.peak)
    else:
        rewards = -lengths
    distance = jnp.abs(lengths - task.mode)
    if setup.reward == "bump":
        gold = rewards
    else:
        gold = jnp.where(task.gold_is_mode, -distance, -lengths)
    ref_tok = _forward_logps(task.ref_params, cfg, tokens, attn, loss_mask)
    batch = dict(tokens=tokens, attn=attn, loss_mask=loss_mask, rewards=rewards,
                 ref_logps=jnp.sum(ref_tok, -1))
    if setup.algorithm == "ppo":
        batch.update(_ppo_targets(setup, params, batch, ref_tok, rewards))
        old_logps = jnp.sum(batch["old_tok"], -1)
    else:
        old_logps = jnp.sum(out.response_logps, -1)
    batch["old_logps"] = old_logps
    stats = dict(gold=jnp.mean(gold), length=jnp.mean(lengths), mode_distance=jnp.mean(distance),
                 train_reward=jnp.mean(rewards), kl_ref=jnp.mean(old_logps - batch["ref_logps"]),
                 eos_rate=jnp.mean((lengths < setup.max_new_tokens).astype(jnp.float32)))
    shape = (setup.prompts_per_iteration, setup.samples_per_prompt)
    batch = jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), batch)
    return batch, stats


def _ppo_targets(setup: Setup, params, batch, ref_tok, scores):
    cfg, P, hp = setup.model, setup.prompt_len, setup.hp
    tokens, attn, loss_mask = batch["tokens"], batch["attn"], batch["loss_mask"]
    old_tok = _forward_logps(params["policy"], cfg, tokens, attn, loss_mask)
    values = dec.token_values(params["value"], cfg, tokens, attn)
    resp = lambda x: x[:, P:]
    mask = resp(loss_mask).astype(jnp.float32)
    old_values = values[:, P - 1:-1] * mask  # state before response token t = prefix to t − 1
    kl = modeseek.kl_penalty(resp(old_tok), resp(ref_tok)) * mask
    last = jax.nn.one_hot(jnp.sum(mask, -1).astype(jnp.int32) - 1, mask.shape[1])
    r = -hp["kl_coef"] * kl + scores[:, None] * last
    adv, returns = modeseek.gae_advantages(r, old_values, mask, gamma=1.0, lam=hp["gae_lambda"])
    mean = modeseek.masked_mean(adv, mask)
    std = jnp.sqrt(modeseek.masked_mean(jnp.square(adv - mean), mask))
    adv = (adv - mean) / (std + 1e-6) * mask
    return dict(old_tok=jax.lax.stop_gradient(old_tok), old_values=old_values,
                advantages=adv, returns=returns)


def _sequence_logps(setup: Setup):
    def logprob_fn(params, mb):
        m, c = mb["tokens"].shape[:2]
        flat = lambda x: x.reshape((m * c,) + x.shape[2:])
        tok = _forward_logps(params, setup.model, flat(mb["tokens"]), flat(mb["attn"]),
                             flat(mb["loss_mask"]))
        return jnp.sum(tok, -1).reshape(m, c)
    return logprob_fn


def _ppo_loss(setup: Setup):
    cfg, P, hp = setup.model, setup.prompt_len, setup.hp

    def loss_fn(params, mb, key):
        del key
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in mb.items() if v.ndim > 2}
        tok = _forward_logps(params["policy"], cfg, flat["tokens"], flat["attn"],
                             flat["loss_mask"])
        values = dec.token_values(params["value"], cfg, flat["tokens"], flat["attn"])
        mask = flat["loss_mask"][:, P:]
        logp, old = tok[:, P:], flat["old_tok"][:, P:]
        pg = modeseek.ppo_clip_loss(logp, old, flat["advantages"], clip_eps=hp["clip_eps"])
        vl = modeseek.clipped_value_loss(values[:, P - 1:-1], flat["old_values"],
                                         flat["returns"], clip_eps=hp["value_clip"])
        clipfrac = modeseek.ppo_clip_fraction(logp, old, clip_eps=hp["clip_eps"])
        pg_loss, v_loss = modeseek.masked_mean(pg, mask), modeseek.masked_mean(vl, mask)
        return pg_loss + hp["vf_coef"] * v_loss, dict(
            value_loss=v_loss, clip_fraction=modeseek.masked_mean(clipfrac, mask))

    return loss_fn


def make_optimizer(setup: Setup):
    return modeseek.make_optimizer(learning_rate=setup.learning_rate, max_grad_norm=1.0)


def make_train_step(setup: Setup):
    if setup.algorithm == "ppo":
        return modeseek.make_train_step(_ppo_loss(setup), make_optimizer(setup))
    hp = {k: v for k, v in setup.hp.items() if k in modeseek.DEFAULT_HPARAMS}
    return modeseek.make_algorithm_train_step(setup.algorithm, _sequence_logps(setup), hp,
                                              make_optimizer(setup))


def _offline_batch(setup: Setup, task: TaskData, key):
    """[M, 2, S] pairs from the offline set, chosen first, rewards (1, 0), π_ref log-probs."""
    off = task.offline
    idx = jax.random.randint(key, (setup.offline_pairs,), 0, off["prompts"].shape[0])
    prompts = off["prompts"][idx]
    seqs = jnp.stack([jnp.concatenate([prompts, off[name][idx]], 1)
                      for name in ("chosen", "rejected")], 1)
    resp_mask = jnp.stack([off["chosen_mask"][idx], off["rejected_mask"][idx]], 1)
    attn = jnp.concatenate([jnp.ones(seqs.shape[:2] + prompts.shape[1:], resp_mask.dtype),
                            resp_mask], 2)
    loss_mask = attn.at[:, :, :setup.prompt_len].set(0)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    ref = jnp.sum(_forward_logps(task.ref_params, setup.model, flat(seqs), flat(attn),
                                 flat(loss_mask)), -1).reshape(-1, 2)
    rewards = jnp.broadcast_to(jnp.array([1.0, 0.0]), ref.shape)
    return dict(tokens=seqs, attn=attn, loss_mask=loss_mask, rewards=rewards,
                ref_logps=jax.lax.stop_gradient(ref), old_logps=jax.lax.stop_gradient(ref))


def update_phase(setup: Setup, train_step, state, batch, task: TaskData, key):
    """T passes of minibatch steps; returns (state, mean step metrics)."""
    if setup.on_policy:
        P, M = setup.prompts_per_iteration, setup.minibatch_prompts
        keys = jax.random.split(key, setup.reuse)
        order = jax.vmap(lambda k: jax.random.permutation(k, P))(keys).reshape(-1, M)

        def step(st, xs):
            idx, k = xs
            return train_step(st, jax.tree.map(lambda x: x[idx], batch), k)

        xs = (order, jax.random.split(jax.random.fold_in(key, 1), order.shape[0]))
    else:
        def step(st, k):
            return train_step(st, _offline_batch(setup, task, k), k)

        xs = jax.random.split(key, setup.reuse)
    state, metrics = jax.lax.scan(step, state, xs)
    return state, jax.tree.map(jnp.mean, metrics)


def make_train(setup: Setup):
    """(init, chunk): see the module docstring."""
    if setup.algorithm not in SUPPORTED:
        raise ValueError(f"algorithm {setup.algorithm!r} is not supported by the synthetic "
                         f"tier; supported: {', '.join(SUPPORTED)}")
    train_step = make_train_step(setup)

    def init(key, task: TaskData):
        k_params, k_run = jax.random.split(key)
        params = init_params(setup, k_params, task.ref_params)
        return modeseek.init_train_state(params, make_optimizer(setup)), k_run

    def chunk(carry, task: TaskData):
        def iteration(carry, _):
            state, key = carry
            key, k_sample, k_update = jax.random.split(key, 3)
            out = sample_phase(setup, state.params, task, k_sample)
            batch, stats = score_phase(setup, state.params, task, out)
            state, metrics = update_phase(setup, train_step, state, batch, task, k_update)
            return (state, key), dict(stats, **metrics)

        return jax.lax.scan(iteration, carry, None, length=setup.iterations_per_chunk)

    return init, chunk
