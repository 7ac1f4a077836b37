"""One run of Algorithm 1 (PAPER.md §2) with a small decoder, on the `modeseek.engine`.

Each iteration:
  sample  B/C prompts from the task's pool, C responses each from the current policy
          (`modeseek.generate`, temperature 1, fixed shapes, exits once every row emitted EOS);
  score   training rewards (proxy RM score or the exact bump) and the engine's one scoring pass
          (`modeseek.score_rollout`: π_ref log-probs, the sampler's π_old log-probs, old values
          for token-level algorithms, whose targets `modeseek.add_ppo_targets` adds); gold
          metrics;
  update  T passes over the batch in minibatches of M prompts (on-policy,
          `modeseek.make_update`), or T steps on random minibatches of the offline preference
          set viewed as [M, 2] groups with rewards (1, 0) (offline algorithms; the sampled batch
          then only measures the policy).
Every loss is `modeseek.make_rollout_loss` for the algorithm: its group objective on sequence
log-probs, or its token objective (PPO) with a separate critic (the decoder with a scalar head,
started from π_ref). The KL coefficient follows `modeseek.adaptive_kl_coef` (fixed at the
default kl_target = 0). Metric row i describes the policy after i iterations (row 0 = the
reference).

`make_train(setup) -> (init, chunk)`: `init(key, task, hparams) -> carry`,
`chunk(carry, task, hparams) -> (carry, metrics [K])` runs K iterations in one `lax.scan`.
`hparams` (learning_rate and every loss hyperparameter of `modeseek.HPARAMS`) are traced
arguments, so one compiled program serves every value and drivers vmap over seeds × values.
All shapes come from the frozen `Setup`, so each algorithm compiles once for every task that
shares its shapes (the three length tasks do).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import modeseek
from modeseek import decoder as dec
from synthetic import tasks

SUPPORTED = ("onpolicy_dpo", "onpolicy_ipo", "onpolicy_bofn", "onpolicy_rwr", "reinforce",
             "rloo", "ppo", "offline_dpo", "offline_ipo", "pref_ft")


@dataclasses.dataclass(frozen=True)
class Setup:
    """Static choices (shapes, algorithm, reward kind): each Setup is one compiled program."""
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

    @property
    def on_policy(self) -> bool:
        return modeseek.get_algorithm(self.algorithm).on_policy

    @property
    def steps_per_iteration(self) -> int:
        if not self.on_policy:
            return self.reuse
        return self.reuse * (self.prompts_per_iteration // self.minibatch_prompts)

    @property
    def policy(self) -> modeseek.PolicyModel:
        token_level = modeseek.get_algorithm(self.algorithm).token_level
        return modeseek.PolicyModel(self.model, value="critic" if token_level else "none")

    @property
    def sampling(self) -> modeseek.Sampling:
        return modeseek.Sampling(max_new_tokens=self.max_new_tokens,
                                 eos_ids=() if self.eos_id is None else (self.eos_id,),
                                 pad_id=tasks.PAD)


class TaskData(NamedTuple):
    """Traced task inputs (so tasks sharing shapes share one compiled program)."""
    prompts: jax.Array          # [K, P] pool
    ref_params: Any
    rm_params: Any              # scalar model, or None for the bump reward
    offline: dict               # prompts [Q, P], chosen/rejected [Q, T] + masks
    mode: jax.Array             # gold mode length (length tasks)
    gold_is_mode: jax.Array     # bool: gold = −|len − mode| instead of −len
    peak: jax.Array             # bump peak (token bandit)


class Carry(NamedTuple):
    state: modeseek.TrainState
    key: jax.Array
    kl_coef: jax.Array


def hparams_of(learning_rate, overrides=None) -> dict:
    """The traced-argument dict: validated loss hyperparameters plus the learning rate."""
    return {**modeseek.resolve_hparams(overrides), "learning_rate": learning_rate}


def make_optimizer(hparams):
    return modeseek.make_optimizer(learning_rate=hparams["learning_rate"], max_grad_norm=1.0)


def sample_phase(setup: Setup, params, task: TaskData, key):
    """C responses for each of B/C random prompts: SampleOutput with B = (B/C)·C rows."""
    k_idx, k_sample = jax.random.split(key)
    idx = jax.random.randint(k_idx, (setup.prompts_per_iteration,), 0, task.prompts.shape[0])
    prompts = task.prompts[idx]
    return modeseek.generate(k_sample, setup.policy, params, prompts, jnp.ones_like(prompts),
                             sampling=setup.sampling,
                             samples_per_prompt=setup.samples_per_prompt)


def score_phase(setup: Setup, params, task: TaskData, out, hparams, kl_coef):
    """(Rollout [B/C, C, ...], iteration stats)."""
    lengths = tasks.response_lengths(out.response_tokens, out.response_mask,
                                     -1 if setup.eos_id is None else setup.eos_id)
    lengths = lengths.astype(jnp.float32)
    if setup.reward == "proxy":
        rewards = dec.score(task.rm_params, setup.model, out.tokens, out.mask)
    elif setup.reward == "bump":
        rewards = tasks.bump_reward(out.response_tokens, out.response_mask, task.peak)
    else:
        rewards = -lengths
    distance = jnp.abs(lengths - task.mode)
    if setup.reward == "bump":
        gold = rewards
    else:
        gold = jnp.where(task.gold_is_mode, -distance, -lengths)
    shape = (setup.prompts_per_iteration, setup.samples_per_prompt)
    rollout = modeseek.score_rollout(setup.policy, params, task.ref_params, out,
                                     rewards.reshape(shape))
    stats = {}
    if modeseek.get_algorithm(setup.algorithm).token_level:
        rollout, kl = modeseek.add_ppo_targets(rollout, hparams, kl_coef)
        stats["kl_coef"] = kl_coef
    kl_ref = rollout.old_logps - rollout.ref_logps
    stats.update(gold=jnp.mean(gold), length=jnp.mean(lengths),
                 mode_distance=jnp.mean(distance), train_reward=jnp.mean(rewards),
                 kl_ref=jnp.mean(kl_ref),
                 eos_rate=jnp.mean((lengths < setup.max_new_tokens).astype(jnp.float32)))
    return rollout, stats


def _offline_rollout(setup: Setup, task: TaskData, key) -> modeseek.Rollout:
    """[M, 2, S] pairs from the offline set, chosen first, rewards (1, 0), π_old = π_ref."""
    off = task.offline
    idx = jax.random.randint(key, (setup.offline_pairs,), 0, off["prompts"].shape[0])
    prompts = off["prompts"][idx]
    seqs = jnp.stack([jnp.concatenate([prompts, off[name][idx]], 1)
                      for name in ("chosen", "rejected")], 1)
    resp_mask = jnp.stack([off["chosen_mask"][idx], off["rejected_mask"][idx]], 1)
    attn = jnp.concatenate([jnp.ones(seqs.shape[:2] + prompts.shape[1:], resp_mask.dtype),
                            resp_mask], 2).astype(bool)
    loss_mask = attn.at[:, :, :setup.prompt_len].set(False)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    logits = dec.forward(task.ref_params, setup.model, flat(seqs),
                         attention_mask_BxL=flat(attn))
    ref_tok = modeseek.token_logprobs(logits, flat(seqs), flat(loss_mask)).reshape(seqs.shape)
    rewards = jnp.broadcast_to(jnp.array([1.0, 0.0]), seqs.shape[:2])
    return modeseek.Rollout(tokens=seqs, attention_mask=attn, response_mask=loss_mask,
                            sampling_logps=ref_tok, ref_token_logps=ref_tok, rewards=rewards,
                            lengths=jnp.sum(loss_mask, -1).astype(jnp.float32),
                            valid=jnp.ones(seqs.shape[:2], bool))


def update_phase(setup: Setup, train_step, state, rollout, task: TaskData, key):
    """T passes of minibatch steps; returns (state, mean step metrics)."""
    if setup.on_policy:
        update = modeseek.make_update(train_step, reuse=setup.reuse,
                                      minibatch_prompts=setup.minibatch_prompts)
        state, metrics = update(state, rollout, key)
    else:
        def step(st, k):
            return train_step(st, _offline_rollout(setup, task, k), k)

        state, metrics = jax.lax.scan(step, state, jax.random.split(key, setup.reuse))
    return state, jax.tree.map(jnp.mean, metrics)


def make_train(setup: Setup):
    """(init, chunk): see the module docstring."""
    if setup.algorithm not in SUPPORTED:
        raise ValueError(f"algorithm {setup.algorithm!r} is not supported by the synthetic "
                         f"tier; supported: {', '.join(SUPPORTED)}")
    policy, P, N = setup.policy, setup.prompts_per_iteration, setup.samples_per_prompt

    def init(key, task: TaskData, hparams):
        k_params, k_run = jax.random.split(key)
        params = policy.init(k_params, task.ref_params)
        state = modeseek.init_train_state(params, make_optimizer(hparams))
        return Carry(state, k_run, jnp.asarray(hparams["kl_coef"], jnp.float32))

    def chunk(carry: Carry, task: TaskData, hparams):
        loss_fn = modeseek.make_rollout_loss(setup.algorithm, policy, setup.sampling, hparams)
        train_step = modeseek.make_train_step(loss_fn, make_optimizer(hparams))

        def iteration(carry: Carry, _):
            state, key, kl_coef = carry
            key, k_sample, k_update = jax.random.split(key, 3)
            out = sample_phase(setup, state.params, task, k_sample)
            rollout, stats = score_phase(setup, state.params, task, out, hparams, kl_coef)
            state, metrics = update_phase(setup, train_step, state, rollout, task, k_update)
            kl_coef = modeseek.adaptive_kl_coef(
                kl_coef, stats["kl_ref"], kl_target=hparams["kl_target"],
                kl_horizon=hparams["kl_horizon"], num_samples=P * N)
            return Carry(state, key, kl_coef), dict(stats, **metrics)

        return jax.lax.scan(iteration, carry, None, length=setup.iterations_per_chunk)

    return init, chunk
