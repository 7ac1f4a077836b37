"""One whole bandit run as a pure function (purejaxrl's pattern):

    train = make_train(setup)                 # static: shapes, policy, the algorithms' menu
    metrics = train(key, rewards_A, knobs)    # traced: seed, reward, every numeric knob

`train` is a single `lax.scan` over gradient steps, so `jax.jit(jax.vmap(train))` runs a whole
table of runs — seeds × rewards × learning rates × algorithms × reuse T × batch sizes — as one
compiled program. The algorithm is a traced index into `setup.algorithms` (a `lax.switch`
over their objectives: the objectives are cheap next to the shared policy forward/backward).

Algorithm 1 of Tajwar et al. as a flat loop over gradient steps s = 0 … S−1:
  - a new batch of B prompts × N samples is drawn whenever s is a multiple of T·B/M
    (on-policy: from the current policy; offline: once, at s = 0, from π_ref);
  - step s trains on minibatch (s mod B/M) of M prompts of that batch, reshuffled each pass.
After **every** step, exact metrics over all A actions on E fixed evaluation prompts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

import modeseek
from bandits import env
from bandits.policies import make_policy, sft_to_reference
from modeseek.objectives import pair_logratio_metrics
from modeseek.pairs import ranked_pairs_mask

KNOBS = ("learning_rate", "algorithm", "reuse", "prompts_per_batch")


@dataclasses.dataclass(frozen=True)
class BanditSetup:
    """Static (shape- or program-changing) choices shared by a table of bandit runs."""

    algorithms: tuple[str, ...]
    num_steps: int = 1500
    policy: str = "mlp"
    max_prompts_per_batch: int = 10  # B_max; each run's B (traced) must divide into M-blocks
    minibatch_prompts: int = 10      # M
    samples_per_prompt: int = 10     # N
    eval_prompts: int = 100          # E
    sft_steps: int = 100
    sft_learning_rate: float = 0.01
    sft_prompts: int = 100
    reference: str = "exact"         # or "sampled" (the authors' 10k-draw histogram)
    pi_star_beta: float = 0.1
    peak_radius: int = 10

    def __post_init__(self):
        if isinstance(self.algorithms, str) or not self.algorithms:
            raise ValueError("algorithms must be a non-empty tuple of algorithm names")
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        for name in self.algorithms:
            modeseek.get_algorithm(name)
        for name in ("num_steps", "max_prompts_per_batch", "minibatch_prompts",
                     "eval_prompts", "sft_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be >= 2, got {self.samples_per_prompt}")
        if self.max_prompts_per_batch % self.minibatch_prompts:
            raise ValueError(f"max_prompts_per_batch ({self.max_prompts_per_batch}) must be a "
                             f"multiple of minibatch_prompts ({self.minibatch_prompts})")
        if self.reference not in ("exact", "sampled"):
            raise ValueError(f"reference must be 'exact' or 'sampled', got {self.reference!r}")
        if self.pi_star_beta <= 0:
            raise ValueError(f"pi_star_beta must be > 0, got {self.pi_star_beta}")
        if self.policy not in ("mlp", "tabular"):
            raise ValueError(f"policy must be 'mlp' or 'tabular', got {self.policy!r}")


def reference_logprobs(reference: str = "exact"):
    probs = (env.reference_policy() if reference == "exact"
             else env.sampled_reference_policy())
    # The sampled histogram can have empty bins: floor them so log π_ref stays finite.
    return jnp.log(jnp.maximum(jnp.asarray(probs, jnp.float32), 1e-12))


def exact_metrics(logp_ExA, ref_logp_A, rewards_A, *, pi_star_beta, peak_radius):
    """Exact policy metrics, averaged over evaluation prompts (sums over all actions)."""
    ref = jnp.broadcast_to(ref_logp_A, logp_ExA.shape)
    opt = jnp.broadcast_to(jax.nn.log_softmax(ref_logp_A + rewards_A / pi_star_beta),
                           logp_ExA.shape)
    actions = jnp.arange(rewards_A.shape[-1])
    near_peak = jnp.abs(actions - jnp.argmax(rewards_A)) <= peak_radius
    mean = jnp.mean
    return {
        "expected_reward": mean(modeseek.expectation(logp_ExA, rewards_A)),
        "kl_policy_ref": mean(modeseek.kl_divergence(logp_ExA, ref)),
        "kl_ref_policy": mean(modeseek.kl_divergence(ref, logp_ExA)),
        "entropy": mean(modeseek.entropy(logp_ExA)),
        "peak_mass": mean(jnp.sum(jnp.exp(logp_ExA) * near_peak, -1)),
        "kl_policy_opt": mean(modeseek.kl_divergence(logp_ExA, opt)),
        "kl_opt_policy": mean(modeseek.kl_divergence(opt, logp_ExA)),
    }


def make_train(setup: BanditSetup):
    """Build `train(key, rewards_A, knobs) -> metrics`.

    `knobs` is a dict of traced scalars: `learning_rate`, `algorithm` (index into
    `setup.algorithms`), `reuse` (T), `prompts_per_batch` (B ≤ B_max, a multiple of M), and
    the objective hyperparameters of `modeseek.DEFAULT_HPARAMS`.

    Returns a dict of [num_steps] curves plus `final_probs` [A] (mean over evaluation prompts)
    and `sft_kl` (KL(π_θ ‖ π_ref) after SFT; 0 for the tabular policy).
    """
    algorithms = [modeseek.get_algorithm(name) for name in setup.algorithms]
    objectives = [a.objective for a in algorithms]
    on_policy_table = jnp.array([a.on_policy for a in algorithms])
    # Static when every algorithm agrees, so the offline program never samples from the policy
    # and keeps its resampling test a real `cond` under vmap.
    all_offline = not any(a.on_policy for a in algorithms)
    ref_logp = reference_logprobs(setup.reference)
    policy = make_policy(setup.policy, ref_logp, env.PROMPT_DIM)
    B_max, M, N = setup.max_prompts_per_batch, setup.minibatch_prompts, setup.samples_per_prompt

    def logprob_fn(params, batch):
        logits_MxA = policy.logits(params, batch["prompts"])
        return modeseek.categorical_logprobs(logits_MxA[:, None, :], batch["actions"])

    def loss_fn(params, batch, knobs):
        logps = logprob_fn(params, batch)
        if len(objectives) == 1:
            loss = objectives[0](logps, batch, knobs)
        else:
            loss = jax.lax.switch(knobs["algorithm"], objectives, logps, batch, knobs)
        return loss, {"logps": logps}

    def sample_batch(key, params, on_policy, rewards_A):
        k_prompt, k_act = jax.random.split(key)
        prompts = env.sample_prompts(k_prompt, B_max)
        if all_offline:
            logp = jnp.broadcast_to(ref_logp, (B_max, ref_logp.shape[0]))
        else:
            logp = jnp.where(on_policy, jax.nn.log_softmax(policy.logits(params, prompts), -1),
                             ref_logp)
        actions = modeseek.sample_categorical(k_act, logp[:, None, :], (B_max, N))
        return {"prompts": prompts, "actions": actions, "rewards": rewards_A[actions],
                "old_logps": jnp.take_along_axis(logp, actions, -1),
                "ref_logps": ref_logp[actions]}

    def train(key, rewards_A, knobs):
        k_init, k_sft, k_eval, k_loop = jax.random.split(key, 4)
        params = policy.init(k_init)
        sft_kl = jnp.zeros(())
        if setup.policy == "mlp":
            params, sft_kl = sft_to_reference(
                policy, params, env.sample_prompts(k_sft, setup.sft_prompts), ref_logp,
                steps=setup.sft_steps, learning_rate=setup.sft_learning_rate)
        eval_prompts = env.sample_prompts(k_eval, setup.eval_prompts)
        tx = modeseek.make_optimizer(learning_rate=knobs["learning_rate"])
        train_step = modeseek.make_train_step(
            lambda p, batch, key: loss_fn(p, batch, knobs), tx)
        on_policy = on_policy_table[knobs["algorithm"]]
        minibatches = knobs["prompts_per_batch"] // M
        if all_offline:
            steps_per_batch = setup.num_steps
        else:
            steps_per_batch = jnp.where(on_policy, jnp.maximum(knobs["reuse"], 1) * minibatches,
                                        setup.num_steps)

        def step(carry, s):
            state, data = carry
            k_step = jax.random.fold_in(k_loop, s)
            fresh = s % steps_per_batch == 0
            data = jax.lax.cond(fresh, lambda: sample_batch(k_step, state.params, on_policy,
                                                            rewards_A), lambda: data)
            # Minibatch (s mod B/M) of this pass, prompts reshuffled per pass; prompts at
            # index ≥ B (this run's batch size) sort last and are never used.
            s_in = s % steps_per_batch
            pass_key = jax.random.fold_in(k_loop, -1 - (s - s_in % minibatches))
            scores = jnp.where(jnp.arange(B_max) < knobs["prompts_per_batch"],
                               jax.random.uniform(pass_key, (B_max,)), 2.0)
            idx = jax.lax.dynamic_slice(jnp.argsort(scores), ((s_in % minibatches) * M,), (M,))
            minibatch = jax.tree.map(lambda x: x[idx], data)
            state, step_metrics = train_step(state, minibatch, k_step)
            logp = jax.nn.log_softmax(policy.logits(state.params, eval_prompts), -1)
            metrics = exact_metrics(logp, ref_logp, rewards_A, pi_star_beta=setup.pi_star_beta,
                                    peak_radius=setup.peak_radius)
            # Winner/loser log-ratios of the minibatch's ranked pairs, before this step.
            pairs = ranked_pairs_mask(minibatch["rewards"], threshold=knobs["threshold"])
            metrics.update(pair_logratio_metrics(step_metrics["logps"],
                                                 minibatch["ref_logps"], pairs))
            metrics.update(loss=step_metrics["loss"], grad_norm=step_metrics["grad_norm"],
                           fresh_batch=fresh)
            return (state, data), metrics

        state = modeseek.init_train_state(params, tx)
        data = sample_batch(k_loop, params, on_policy, rewards_A)
        (state, _), metrics = jax.lax.scan(step, (state, data), jnp.arange(setup.num_steps))
        # Reward queries so far: B·N per freshly sampled batch.
        metrics["reward_queries"] = jnp.cumsum(metrics.pop("fresh_batch")) * (
            knobs["prompts_per_batch"] * N)
        final_logp = jax.nn.log_softmax(policy.logits(state.params, eval_prompts), -1)
        metrics["final_probs"] = jnp.mean(jnp.exp(final_logp), 0)
        # How much the policy varies across prompts (the reward ignores them).
        metrics["final_reward_prompt_std"] = jnp.std(modeseek.expectation(final_logp, rewards_A))
        metrics["sft_kl"] = sft_kl
        return metrics

    return train
