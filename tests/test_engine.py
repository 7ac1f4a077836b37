"""The on-policy engine (`modeseek.engine`) on a tiny decoder: the rollout's layout and scoring
pass, the update equals a hand-written loop over prompt minibatches, no sampler/trainer
mismatch (ratio 1 at the first update with temperature 0.7 and top-p 0.9), token-level PPO
through the engine, and the one home of hyperparameter defaults and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import optax
import pytest

import modeseek as ms
from modeseek import decoder as dec

CFG = dec.DecoderConfig.tiny(vocab_size=40, max_len=24, num_layers=1)
P, N, LP = 2, 3, 4


def _prompts():
    tokens = np.array([[0, 5, 6, 7], [0, 0, 8, 9]], np.int32)
    return jnp.asarray(tokens), jnp.asarray(tokens > 0)


def _rollout(policy, params, sampling, key=0):
    prompts, mask = _prompts()
    samples = ms.generate(jax.random.key(key), policy, params, prompts, mask, sampling=sampling,
                          samples_per_prompt=N)
    # a reward that separates samples: the sum of the response's token ids
    rewards = jnp.sum(samples.response_tokens * samples.response_mask, 1)
    rewards = rewards.reshape(P, N).astype(jnp.float32)
    ref_params = policy.decoder_params(params)
    return samples, ms.score_rollout(policy, params, ref_params, samples, rewards)


def test_rollout_layout_and_scoring_pass():
    params = dec.init_params(jax.random.key(0), CFG)
    policy = ms.PolicyModel(CFG)
    samples, r = _rollout(policy, params, ms.Sampling(max_new_tokens=6, eos_ids=(3,)))
    S = LP + 6
    assert r.tokens.shape == (P, N, S) and r.rewards.shape == (P, N) and r.keep_bits is None
    for i in range(N):  # row p·N + i of the sampler is sample i of prompt p
        np.testing.assert_array_equal(r.tokens[1, i], samples.tokens[N + i])
    # reference log-probs: masked sums over response tokens, by the NumPy helper
    logits = np.asarray(dec.forward(params, CFG, samples.tokens, attention_mask_BxL=samples.mask))
    resp = np.concatenate([np.zeros((P * N, LP), bool), np.asarray(samples.response_mask, bool)], 1)
    want = ref.sequence_logprobs(logits, np.asarray(samples.tokens), resp).reshape(P, N)
    np.testing.assert_allclose(r.ref_logps, want, rtol=1e-5, atol=1e-4)
    # the policy is the reference here and sampling is plain: old = ref up to the KV cache
    np.testing.assert_allclose(r.old_logps, r.ref_logps, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(r.lengths, np.asarray(samples.response_mask).sum(1).reshape(P, N))
    assert not np.any(np.asarray(r.response_mask)[..., :LP])


def test_update_equals_hand_written_minibatch_loop():
    params = dec.init_params(jax.random.key(1), CFG)
    policy, sampling = ms.PolicyModel(CFG), ms.Sampling(max_new_tokens=5, eos_ids=(3,))
    _, rollout = _rollout(policy, params, sampling)
    hp = ms.resolve_hparams({"beta": 0.5})
    # SGD, not Adam: the scanned update and the hand loop are different programs, and Adam's
    # lr·g/|g| turns float rounding of a near-zero gradient into a step of up to lr.
    opt = optax.sgd(1e-2)
    step = ms.make_train_step(ms.make_rollout_loss("onpolicy_dpo", policy, sampling, hp), opt)
    reuse, M = 3, 1
    key = jax.random.key(7)
    state0 = ms.init_train_state(params, opt)
    state, metrics = jax.jit(ms.make_update(step, reuse=reuse, minibatch_prompts=M))(
        state0, rollout, key)
    # by hand: a fresh permutation per pass, M prompts at a time, all N samples of each
    perm_key, step_key = jax.random.split(key)
    host = jax.tree.map(np.asarray, rollout)
    hand, losses, i = state0, [], 0
    jstep = jax.jit(step)
    for e in range(reuse):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(perm_key, e), P))
        for start in range(0, P, M):
            idx = order[start:start + M]
            mb = ms.Rollout(*[None if x is None else x[idx] for x in host])
            hand, m = jstep(hand, mb, jax.random.fold_in(step_key, i))
            losses.append(float(m["loss"]))
            i += 1
    assert metrics["loss"].shape == (reuse * P // M,)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(hand.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(state.step) == reuse * P // M
    assert len(set(np.round(losses, 6))) > 1  # the steps really differ


def test_trimmed_responses_score_and_update_the_same():
    """Cutting the response axis to the longest response's bucket removes only padding: the
    rollout's sequence log-probs, lengths and an SGD update match the untrimmed ones (keep bits
    included: top-p sampling)."""
    params = dec.init_params(jax.random.key(2), CFG)
    policy = ms.PolicyModel(CFG)
    sampling = ms.Sampling(max_new_tokens=12, top_p=0.9, eos_ids=(3, 4, 5, 6, 7))
    prompts, mask = _prompts()
    samples = ms.generate(jax.random.key(3), policy, params, prompts, mask, sampling=sampling,
                          samples_per_prompt=N)
    longest = int(np.asarray(samples.response_mask).sum(1).max())
    assert longest < 12  # the EOS set makes every sample stop early
    power_of_two = 1 << (longest - 1).bit_length()
    assert ms.response_bucket(samples, minimum=2) == min(12, max(2, power_of_two))
    assert ms.response_bucket(samples) == 12  # minimum 16, capped at the sampled width
    trimmed = ms.trim_responses(samples, longest)
    assert trimmed.tokens.shape == (P * N, LP + longest)
    assert trimmed.response_keep_bits.shape[1] == longest
    with pytest.raises(ValueError, match="length must be in 1..12"):
        ms.trim_responses(samples, 13)
    rewards = jnp.arange(P * N, dtype=jnp.float32).reshape(P, N)
    full, cut = (ms.score_rollout(policy, params, params, s, rewards) for s in (samples, trimmed))
    for name in ("old_logps", "ref_logps", "lengths"):
        np.testing.assert_allclose(getattr(cut, name), getattr(full, name), rtol=1e-5, atol=1e-5)
    opt = optax.sgd(1e-2)
    step = ms.make_train_step(ms.make_rollout_loss("onpolicy_dpo", policy, sampling,
                                                   ms.resolve_hparams({"beta": 0.5})), opt)
    update = jax.jit(ms.make_update(step, reuse=1, minibatch_prompts=P))
    (a, ma), (b, mb) = (update(ms.init_train_state(params, opt), r, jax.random.key(4))
                        for r in (full, cut))
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _token_sum_score(policy, ref_params):
    """score(params, samples, scale) with the token-sum reward of `_rollout` times `scale`."""

    def score(params, samples, scale):
        rewards = jnp.sum(samples.response_tokens * samples.response_mask, 1)
        rewards = (rewards.reshape(P, N) * scale).astype(jnp.float32)
        rollout = ms.score_rollout(policy, params, ref_params, samples, rewards)
        return rollout, ms.rollout_metrics(rollout), {"proxy": rewards}

    return score


def test_one_program_iteration_equals_the_phases():
    """`make_iteration` (sample → score → update in one jit) gives the phase-by-phase loop's
    samples, rollout metrics and SGD update, with the same keys; a NaN reward skips the update
    and says so."""
    params = dec.init_params(jax.random.key(5), CFG)
    policy = ms.PolicyModel(CFG)
    sampling = ms.Sampling(max_new_tokens=6, top_k=20, eos_ids=(3,))
    opt = optax.sgd(1e-2)
    step = ms.make_train_step(ms.make_rollout_loss("onpolicy_dpo", policy, sampling,
                                                   ms.resolve_hparams({"beta": 0.5})), opt)
    update = ms.make_update(step, reuse=2, minibatch_prompts=1)
    score = _token_sum_score(policy, params)
    iteration = jax.jit(ms.make_iteration(policy, sampling, samples_per_prompt=N, score=score,
                                          update=update))
    prompts, mask = _prompts()
    key = jax.random.key(9)
    state0 = ms.init_train_state(params, opt)
    state, out = iteration(state0, prompts, mask, key, 1.0)
    metrics, score_metrics, scores = out["update"], out["rollout"], out["scores"]
    assert bool(out["finite"]) and int(state.step) == 2 * P

    samples = jax.jit(lambda p, k: ms.generate(k, policy, p, prompts, mask, sampling=sampling,
                                               samples_per_prompt=N))(params,
                                                                      jax.random.fold_in(key, 0))
    rollout, want_metrics, want_scores = jax.jit(score)(params, samples, 1.0)
    want_state, want = jax.jit(update)(state0, rollout, jax.random.fold_in(key, 1))
    np.testing.assert_array_equal(scores["proxy"], want_scores["proxy"])
    for name, value in want_metrics.items():
        np.testing.assert_allclose(score_metrics[name], value, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(metrics["loss"], want["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_state.params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                     jax.tree.leaves(params), strict=True))

    state, out = iteration(state0, prompts, mask, key, jnp.nan)
    assert not bool(out["finite"]) and np.all(np.isnan(out["scores"]["proxy"]))
    assert int(state.step) == 0 and np.all(np.isnan(out["update"]["loss"]))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sampling_mask_makes_first_update_ratio_one():
    """temperature 0.7, top-p 0.9: training-side log-probs through the kept mask equal the
    sampler's for every response token; without the mask they would not."""
    params = dec.init_params(jax.random.key(2), CFG)
    policy = ms.PolicyModel(CFG, value="shared")
    params = policy.init(jax.random.key(3), params)
    sampling = ms.Sampling(max_new_tokens=8, temperature=0.7, top_p=0.9)
    _, r = _rollout(policy, params, sampling, key=4)
    assert r.keep_bits is not None and r.keep_bits.shape[-1] == 2  # 40 tokens → 2 words
    flat = lambda x: x.reshape((P * N,) + x.shape[2:])
    logits, _ = policy.apply(params, flat(r.tokens), flat(r.attention_mask))
    train = ms.sampled_token_logprobs(logits, flat(r.tokens), flat(r.response_mask),
                                      temperature=0.7, keep_bits=flat(r.keep_bits))
    m = np.asarray(flat(r.response_mask))
    ratio = np.exp(np.asarray(train) - np.asarray(flat(r.sampling_logps)))[m]
    assert m.sum() == P * N * 8
    np.testing.assert_allclose(ratio, 1.0, atol=2e-5)
    untruncated = ms.sampled_token_logprobs(logits, flat(r.tokens), flat(r.response_mask),
                                            temperature=0.7)
    assert np.max(np.abs(np.exp(np.asarray(untruncated) - flat(r.sampling_logps))[m] - 1)) > 1e-2
    # and the PPO loss sees ratio 1: no clipping at the first step
    r, _ = ms.add_ppo_targets(r, ms.DEFAULT_HPARAMS, 0.05)
    loss_fn = ms.make_rollout_loss("ppo", policy, sampling, ms.DEFAULT_HPARAMS)
    _, metrics = jax.jit(loss_fn)(params, r, None)
    assert float(metrics["ppo/clip_fraction"]) == 0.0


def test_pack_mask_round_trip_and_hand_example():
    mask = np.zeros((2, 35), bool)
    mask[0, [0, 3, 33]] = True
    bits = ms.pack_mask(jnp.asarray(mask))
    assert bits.dtype == jnp.uint32 and bits.shape == (2, 2)
    np.testing.assert_array_equal(bits[0], [1 + 8, 2])
    np.testing.assert_array_equal(ms.unpack_mask(bits, 35), mask)


def test_sampled_token_logprobs_hand_example():
    """Vocab 3, logits (0, 0, ln 2) predicting token 2 at temperature 0.5 restricted to
    {1, 2}: softmax((0, 2 ln 2)) over the kept pair → log(4/5)."""
    logits = jnp.array([[[0.0, 0.0, np.log(2.0)], [0.0, 0.0, 0.0]]])
    tokens = jnp.array([[1, 2]])
    keep = ms.pack_mask(jnp.array([[[False] * 3, [False, True, True]]]))
    out = ms.sampled_token_logprobs(logits, tokens, temperature=0.5, keep_bits=keep)
    np.testing.assert_allclose(out, [[0.0, np.log(4 / 5)]], rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(ms.sampled_token_logprobs(
        x, tokens, temperature=0.5, keep_bits=keep)))(logits)
    assert np.all(np.isfinite(g)) and g[0, 0, 0] == 0  # the dropped token gets no gradient


@pytest.mark.parametrize("value", ["shared", "critic"])
def test_ppo_through_the_engine_trains(value):
    policy = ms.PolicyModel(CFG, value=value)
    params = policy.init(jax.random.key(5), dec.init_params(jax.random.key(6), CFG))
    sampling = ms.Sampling(max_new_tokens=5, eos_ids=(3,))
    _, r = _rollout(policy, params, sampling)
    assert r.values.shape == r.tokens.shape
    np.testing.assert_array_equal(np.asarray(r.values)[~np.asarray(r.response_mask)], 0)
    hp = ms.resolve_hparams({"vf_coef": 0.5})
    r, kl = ms.add_ppo_targets(r, hp, 0.1)
    assert kl.shape == (P, N)
    opt = ms.make_optimizer(learning_rate=1e-2)
    step = ms.make_train_step(ms.make_rollout_loss("ppo", policy, sampling, hp), opt)
    update = jax.jit(ms.make_update(step, reuse=2, minibatch_prompts=1))
    state, metrics = update(ms.init_train_state(params, opt), r, jax.random.key(0))
    assert np.all(np.isfinite(metrics["loss"])) and np.all(metrics["grad_norm"] > 0)
    if value == "critic":  # the critic has its own decoder, which the value loss trains
        moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                             state.params["critic"]["decoder"], params["critic"]["decoder"])
        assert max(jax.tree.leaves(moved)) > 0


def test_token_level_algorithm_needs_a_value_function():
    with pytest.raises(ValueError, match="value function"):
        ms.make_rollout_loss("ppo", ms.PolicyModel(CFG), ms.Sampling(4), ms.DEFAULT_HPARAMS)
    with pytest.raises(ValueError, match="value must be one of"):
        ms.PolicyModel(CFG, value="head")


def test_hparams_have_one_home():
    hp = ms.resolve_hparams({"beta": 0.3})
    assert hp["beta"] == 0.3 and hp["tau"] == ms.DEFAULT_HPARAMS["tau"]
    with pytest.raises(ValueError, match="stage.hparams.betta: unknown hyperparameter; did you "
                                         "mean 'beta'"):
        ms.resolve_hparams({"betta": 1.0}, where="stage.hparams")
    for name, bad in [("beta", 0.0), ("tau", -1.0), ("label_smoothing", 0.5),
                      ("gae_lambda", 1.5), ("clip_eps", float("nan")), ("kl_coef", -0.1)]:
        with pytest.raises(ValueError, match=f"hparams.{name} must lie in"):
            ms.resolve_hparams({name: bad})
    ms.resolve_hparams({"gamma": 1.0, "kl_coef": 0.0, "threshold": 0.0})  # closed ends accepted
    # traced values are not checked here (a vmapped sweep validates its grid first)
    out = jax.vmap(lambda b: ms.resolve_hparams({"beta": b})["beta"])(jnp.array([1.0, -1.0]))
    np.testing.assert_array_equal(out, [1.0, -1.0])
    for a in ms.ALGORITHMS.values():  # every objective reads only names with a home
        assert set(a.needs) <= set(ms.HPARAMS), a.name


def test_every_public_name_has_a_docstring():
    """`help(modeseek.X)` documents every public function and class (the tables are dicts,
    documented in `modeseek.taxonomy`)."""
    import inspect
    import types

    tables = {"ALGORITHMS", "DEFAULT_HPARAMS", "HPARAMS"}
    missing = [n for n in dir(ms) if not n.startswith("_") and n not in tables
               and not isinstance(getattr(ms, n), types.ModuleType)
               and not (inspect.getdoc(getattr(ms, n)) or "").strip()]
    assert missing == []


def test_readme_iteration_snippet_runs():
    """README's "whole on-policy iteration" notebook snippet, run as written on a tiny model."""
    import os
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
                   if "make_iteration" in block)
    config = CFG.replace(max_len=64)
    params = dec.init_params(jax.random.key(0), config)
    optimizer = optax.sgd(1e-2)
    prompts, mask = _prompts()
    names = dict(jax=jax, jnp=jnp, modeseek=ms, decoder_config=config, eos=3, optimizer=optimizer,
                 P=P, N=N, state=ms.init_train_state(params, optimizer), prompt_tokens=prompts,
                 prompt_mask=mask, key=jax.random.key(1), ref_params=params)
    exec(snippet, names)
    state, out = names["state"], names["out"]
    assert int(state.step) == 2  # T = 2 passes of one minibatch
    assert bool(out["finite"]) and out["scores"]["proxy"].shape == (P, N)
