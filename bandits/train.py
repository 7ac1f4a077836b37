"""One whole bandit run as a pure function (purejaxrl's pattern):

    setup = BanditSetup(algorithms=...)            # static: shapes, policy, the algorithms' menu
    params0 = make_init(setup)(seed_key)           # π_θ after SFT to π_ref (once per seed)
    metrics = make_train(setup)(key, params0, rewards_A, knobs)   # traced: every numeric knob

`train` is a single `lax.scan` over gradient steps, so `jax.jit(jax.vmap(train))` runs a whole
table of runs — seeds × rewards × learning rates × algorithms × reuse T × batch sizes, on-policy
and offline alike — as ONE compiled program. The algorithm is a traced index into
`setup.algorithms` (a `lax.switch` over their objectives). Pass it UNBATCHED (one algorithm per
vmapped call, as bandits.study.Runner does): a batched index makes vmap compute every objective
and select, which cost ≈ 40% of a run-step with 13 objectives. Each step runs the policy's
forward pass on its minibatch once (`jax.vjp`): its logits give the loss, π_old's log-probs at
a round's start, and the pullback the gradient; Adam is `modeseek.optim.fused_adam`.
The SFT initialisation depends only on the seed, so it is computed once per seed and shared
by every run of that seed (all methods start from the same policy).

Algorithm 1 of Tajwar et al. as a flat loop over gradient steps s = 0 … S−1, for a run with
batch B prompts (a multiple of the minibatch M) and reuse T:
  - rounds: on-policy runs start round ⌊s / (T·B/M)⌋ every T·B/M steps and keep the policy at
    its start, π_old; offline runs have one round (the dataset, drawn from π_ref, never
    changes);
  - step s trains on minibatch (s mod B/M) of the round's B prompts, reshuffled each pass.
Samples are drawn lazily and deterministically: prompt i of round k is U[0,1]^D from
fold_in(key_k, i) and its N actions come from π_old(·|x_i) (or π_ref) with fold_in(key'_k, i),
so re-reading prompt i in a later pass of the round gives the same prompts, actions and
rewards as one draw of the whole batch at the round's start, at the cost of M prompts per step
whatever B is (B = 640 costs what B = 10 does).
Every `eval_every` steps: exact metrics over all A actions on E fixed evaluation prompts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

import modeseek
from bandits import env
from bandits.policies import make_policy, sft_to_reference
from modeseek.objectives import pair_logratio_metrics
from modeseek.optim import fused_adam
from modeseek.pairs import ranked_pairs_mask


@dataclasses.dataclass(frozen=True)
class BanditSetup:
    """Static (shape- or program-changing) choices shared by a table of bandit runs."""

    algorithms: tuple[str, ...]
    num_steps: int = 300
    policy: str = "mlp"
    max_prompts_per_batch: int = 10  # B_max: the largest B of any run (prompts per round)
    minibatch_prompts: int = 10      # M
    samples_per_prompt: int = 10     # N
    eval_prompts: int = 10           # E
    eval_every: int = 1              # exact metrics every this many steps
    stale_batches: bool = False      # on-policy runs may use B > M (see make_train)
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
                     "eval_prompts", "sft_prompts", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be >= 2, got {self.samples_per_prompt}")
        if self.max_prompts_per_batch % self.minibatch_prompts:
            raise ValueError(f"max_prompts_per_batch ({self.max_prompts_per_batch}) must be a "
                             f"multiple of minibatch_prompts ({self.minibatch_prompts})")
        if self.num_steps % self.eval_every:
            raise ValueError(f"num_steps ({self.num_steps}) must be a multiple of eval_every "
                             f"({self.eval_every})")
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


def make_init(setup: BanditSetup):
    """`init(key) -> (params, sft_kl)`: the policy at π_ref (MLP: after SFT; tabular: exact).

    `key` is the run's seed key; `make_train` derives its other streams from the same key.
    """
    ref_logp = reference_logprobs(setup.reference)
    policy = make_policy(setup.policy, ref_logp, env.PROMPT_DIM)

    def init(key):
        k_init, k_sft, _, _ = jax.random.split(key, 4)
        params = policy.init(k_init)
        if setup.policy != "mlp":
            return params, jnp.zeros(())
        return sft_to_reference(policy, params, env.sample_prompts(k_sft, setup.sft_prompts),
                                ref_logp, steps=setup.sft_steps,
                                learning_rate=setup.sft_learning_rate)

    return init


def make_train(setup: BanditSetup):
    """Build `train(key, params0, rewards_A, knobs) -> metrics`.

    `params0` is `make_init(setup)(key)[0]`; `knobs` is a dict of traced scalars:
    `learning_rate`, `algorithm` (index into `setup.algorithms`), `reuse` (T),
    `prompts_per_batch` (B ≤ B_max, a multiple of M; offline runs: the dataset's prompts), and
    the objective hyperparameters of `modeseek.DEFAULT_HPARAMS`.

    π_old: with `setup.stale_batches` on-policy runs may use B > M and the program keeps a
    copy of the parameters at each round's start (one more forward and one more pass over the
    parameters per step); without it on-policy runs must have B = M, and π_old's log-probs on
    the round's M prompts are kept instead (the caller checks B; see bandits.study.Runner).

    Returns a dict of [num_steps / eval_every] curves (metrics after steps eval_every,
    2·eval_every, …; `loss`, `grad_norm`, the pair metrics and `reward_queries` of those steps)
    plus `final_probs` [A] (mean over evaluation prompts).
    """
    algorithms = [modeseek.get_algorithm(name) for name in setup.algorithms]
    objectives = [a.objective for a in algorithms]
    on_policy_table = jnp.array([a.on_policy for a in algorithms])
    # Static when every algorithm agrees, so an all-offline program never runs π_old.
    any_on_policy = any(a.on_policy for a in algorithms)
    ref_logp = reference_logprobs(setup.reference)
    policy = make_policy(setup.policy, ref_logp, env.PROMPT_DIM)
    B_max, M, N = setup.max_prompts_per_batch, setup.minibatch_prompts, setup.samples_per_prompt

    def loss_fn(logits_MxA, batch, knobs):
        """The objective as a function of the minibatch's logits (the policy's forward pass is
        shared with π_old's, see `train`)."""
        logps = modeseek.categorical_logprobs(logits_MxA[:, None, :], batch["actions"])
        if len(objectives) == 1:
            loss = objectives[0](logps, batch, knobs)
        else:
            loss = jax.lax.switch(knobs["algorithm"], objectives, logps, batch, knobs)
        return loss, logps

    def minibatch_indices(key, s_in, minibatches):
        """Prompt indices [M] of this step's minibatch: the round's B prompts form B/M blocks
        of M (prompts are iid, so fixed blocks lose nothing), and each pass ⌊s_in / (B/M)⌋
        visits the blocks in a fresh random order (blocks ≥ B/M sort last, never used)."""
        if B_max == M:
            return jnp.arange(M)
        pass_key = jax.random.fold_in(key, s_in // minibatches)
        scores = jnp.where(jnp.arange(B_max // M) < minibatches,
                           jax.random.uniform(pass_key, (B_max // M,)), 2.0)
        return jnp.argsort(scores)[s_in % minibatches] * M + jnp.arange(M)

    def draw_prompts(round_key, idx):
        """Prompts idx of the round: U[0,1]^D from fold_in(key, i), [M, D]."""
        return jax.vmap(lambda i: env.sample_prompts(jax.random.fold_in(round_key, i), 1)[0]
                        )(idx)

    def draw_samples(round_key, idx, prompts, logp_MxA, rewards_A):
        """N actions per prompt from the behaviour log-probs, keyed by the prompt's index."""
        actions = jax.vmap(lambda i, lp: modeseek.sample_categorical(
            jax.random.fold_in(round_key, i), lp, (N,)))(idx, logp_MxA)
        return {"prompts": prompts, "actions": actions, "rewards": rewards_A[actions],
                "old_logps": jnp.take_along_axis(logp_MxA, actions, -1),
                "ref_logps": ref_logp[actions]}

    def train(key, params0, rewards_A, knobs):
        _, _, k_eval, k_loop = jax.random.split(key, 4)
        k_data, k_pass = jax.random.split(k_loop)
        eval_prompts = env.sample_prompts(k_eval, setup.eval_prompts)
        tx = fused_adam(knobs["learning_rate"])
        on_policy = on_policy_table[knobs["algorithm"]]
        batch_prompts = knobs["prompts_per_batch"]
        minibatches = batch_prompts // M
        steps_per_round = jnp.where(on_policy, jnp.maximum(knobs["reuse"], 1) * minibatches,
                                    setup.num_steps)

        def step(carry, s):
            state, behaviour = carry
            s_in = s % steps_per_round
            fresh = s_in == 0
            round_index = s // steps_per_round
            idx = minibatch_indices(jax.random.fold_in(k_pass, round_index), s_in, minibatches)
            k_prompts, k_actions = jax.random.split(jax.random.fold_in(k_data, round_index))
            prompts = draw_prompts(k_prompts, idx)
            # π_old(·|prompts): the policy when this round's batch was drawn.
            logp = jnp.broadcast_to(ref_logp, (M, ref_logp.shape[0]))
            # The policy's forward pass on the minibatch, once: the loss's logits, and π_old's
            # when the round starts at this step (its pullback gives the gradient below).
            logits, pullback = jax.vjp(lambda p: policy.logits(p, prompts), state.params)
            if any_on_policy and setup.stale_batches:  # keep π_old's parameters
                behaviour = jax.tree.map(lambda p, o: jnp.where(fresh, p, o), state.params,
                                         behaviour)
                # lax.cond: a chunk of one offline algorithm (bandits.study.Runner) skips it.
                logp = jax.lax.cond(on_policy, lambda: jax.nn.log_softmax(
                    policy.logits(behaviour, prompts), -1), lambda: logp)
            elif any_on_policy:  # B = M: the same prompts all round; keep π_old's log-probs
                behaviour = jnp.where(fresh, jax.nn.log_softmax(logits, -1), behaviour)
                logp = jnp.where(on_policy, behaviour, logp)
            minibatch = draw_samples(k_actions, idx, prompts, logp, rewards_A)
            (loss, logps), dlogits = jax.value_and_grad(loss_fn, has_aux=True)(
                logits, minibatch, knobs)
            (grads,) = pullback(dlogits)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            state = modeseek.TrainState(optax.apply_updates(state.params, updates), opt_state,
                                        state.step + 1)
            # Only the last step of each `eval_every` block is logged: the gradient norm (a
            # pass over all parameters) and the winner/loser log-ratios of the minibatch's
            # ranked pairs (before this step) are computed there only. `s` is the scan index,
            # never batched, so under vmap this stays a branch rather than a select.
            def logged():
                pairs = ranked_pairs_mask(minibatch["rewards"], threshold=knobs["threshold"])
                return pair_logratio_metrics(logps, minibatch["ref_logps"], pairs) | {
                    "grad_norm": optax.tree.norm(grads)}

            logged_metrics = jax.eval_shape(logged)
            metrics = jax.lax.cond(
                (s + 1) % setup.eval_every == 0, logged,
                lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), logged_metrics))
            metrics.update(loss=loss, fresh_batch=fresh)
            return (state, behaviour), metrics

        def block(carry, b):
            carry, metrics = jax.lax.scan(step, carry, b * setup.eval_every
                                          + jnp.arange(setup.eval_every))
            logp = jax.nn.log_softmax(policy.logits(carry[0].params, eval_prompts), -1)
            metrics = jax.tree.map(lambda x: x[-1], metrics) | {
                "new_batches": jnp.sum(metrics["fresh_batch"])}
            metrics.update(exact_metrics(logp, ref_logp, rewards_A,
                                         pi_star_beta=setup.pi_star_beta,
                                         peak_radius=setup.peak_radius))
            return carry, metrics

        state = modeseek.init_train_state(params0, tx)
        num_blocks = setup.num_steps // setup.eval_every
        behaviour = params0 if setup.stale_batches else jnp.zeros((M, ref_logp.shape[0]))
        (state, _), metrics = jax.lax.scan(block, (state, behaviour), jnp.arange(num_blocks))
        # Reward queries so far: B·N per freshly drawn batch (the whole dataset, offline).
        metrics.pop("fresh_batch")
        metrics["reward_queries"] = jnp.cumsum(metrics.pop("new_batches")) * (batch_prompts * N)
        final_logp = jax.nn.log_softmax(policy.logits(state.params, eval_prompts), -1)
        metrics["final_probs"] = jnp.mean(jnp.exp(final_logp), 0)
        # How much the policy varies across prompts (the reward ignores them).
        metrics["final_reward_prompt_std"] = jnp.std(modeseek.expectation(final_logp, rewards_A))
        return metrics

    return train
