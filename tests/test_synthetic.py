"""Tests for the synthetic tier on tiny configs (a 1-layer decoder, 12-token responses)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from synthetic import study, tasks


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = synthetic_config.get_config("tiny")
    config.unlock()
    config.data.pref_prompts = 256
    config.data.rm_steps = 60
    config.tasks = ("min", "skew")   # skew: capped at π_ref's median (the compiled RM is shared)
    config.data.skew_cap = 0
    cache = str(tmp_path_factory.mktemp("cache"))
    cfg, ref_meta, task_map = study.build_tasks(config, cache, log=lambda *_: None)
    return config, cfg, ref_meta, task_map, cache


# ----------------------------------------------------------------------------- data


def test_cauchy_histogram_matches_paper_values():
    p = tasks.cauchy_histogram()
    assert p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(0.0781, abs=1e-4)
    assert p[99] == pytest.approx(0.0422, abs=1e-4)
    assert p[70] == pytest.approx(0.00211, abs=1e-5)
    assert int(np.argmax(p[5:95])) + 5 == 16


def test_bump_reward_hand_values():
    tokens = jnp.array([[70, 70, 80], [60, 0, 0]])
    mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    r = tasks.bump_reward(tokens, mask, 70.0)
    np.testing.assert_allclose(r, [(2 + np.exp(-1)) / 3, np.exp(-1)], rtol=1e-6)


def test_language_lengths_follow_pmf_and_end_with_eos():
    rng = np.random.default_rng(0)
    pmf = tasks.length_pmf(48, 16.0)
    assert pmf[0] == 0 and int(np.argmax(pmf)) == 16
    prompts = tasks.language_prompts(rng, 4000, 32)
    resp, mask = tasks.language_responses(rng, prompts, tasks.transition_matrix(32), pmf)
    lengths = tasks.response_lengths(resp, mask)
    assert abs(lengths.mean() - np.dot(np.arange(48), pmf)) < 0.6
    assert np.all(resp[np.arange(4000), lengths] == tasks.EOS)
    assert np.all(mask.sum(1) == lengths + 1)
    assert np.all(resp[:, :1] >= 3)


def test_response_lengths_without_eos_is_full_length():
    tok = np.array([[5, 6, 1, 0], [5, 6, 7, 8]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(tasks.response_lengths(tok, mask), [2, 4])
    np.testing.assert_array_equal(tasks.response_lengths(jnp.asarray(tok), jnp.asarray(mask)),
                                  [2, 4])


@pytest.mark.parametrize("task", tasks.LENGTH_TASKS)
def test_preference_pairs_prefer_by_gold(task):
    rng = np.random.default_rng(1)
    prompts = tasks.language_prompts(rng, 300, 32)
    resp, mask = tasks.language_responses(rng, np.repeat(prompts, 2, 0),
                                          tasks.transition_matrix(32), tasks.length_pmf(30, 10.0))
    pairs = tasks.preference_pairs(rng, task, prompts, resp.reshape(300, 2, -1),
                                   mask.reshape(300, 2, -1), skew_cap=6)
    lw, ll = pairs["chosen_length"], pairs["rejected_length"]
    assert len(lw) + pairs["dropped_ties"] == 300
    gw = tasks.gold_reward(lw, task, pairs["mode"])
    gl = tasks.gold_reward(ll, task, pairs["mode"])
    assert np.all(gw > gl)
    np.testing.assert_array_equal(tasks.response_lengths(pairs["chosen"], pairs["chosen_mask"]),
                                  lw)
    if task == "skew":
        assert lw.max() <= 6 and ll.max() <= 6


# ----------------------------------------------------------------------------- models


def test_reference_sft_lowers_loss(built):
    _, _, ref_meta, _, _ = built
    assert ref_meta["sft_loss_last"] < ref_meta["sft_loss_first"] - 0.5


def test_proxy_rm_beats_chance_on_heldout_pairs(built):
    _, _, _, task_map, _ = built
    meta = task_map["min"][1]
    assert meta["heldout_pairs"] >= 10
    assert meta["rm_heldout_accuracy"] > 0.7, meta


def test_built_skew_task_caps_at_reference_median_and_judges_rm_on_reference(built):
    config, _, _, task_map, _ = built
    meta = task_map["skew"][1]
    assert meta["skew_cap"] == meta["ref_median_length"] >= 1
    assert meta["rm_ref_pairs"] > 0 and 0 <= meta["rm_ref_accuracy"] <= 1
    assert len(meta["rm_score_by_length"]) == 13 == len(meta["rm_count_by_length"])
    assert sum(meta["rm_count_by_length"]) == 2 * config.data.rm_eval_prompts


def test_build_is_cached(built):
    config, _, ref_meta, task_map, cache = built
    logs = []
    _, ref2, map2 = study.build_tasks(config, cache, log=logs.append)
    trained = [line for line in logs if "proxy RM accuracy" not in line]
    assert all("cached" in line for line in trained) and len(trained) == 1 + len(config.tasks)
    assert map2["min"][1]["rm_heldout_accuracy"] == task_map["min"][1]["rm_heldout_accuracy"]
    # the π_ref checks are recomputed from the same fresh pairs: the same numbers
    assert map2["min"][1]["rm_ref_accuracy"] == task_map["min"][1]["rm_ref_accuracy"]


# ----------------------------------------------------------------------------- training


def _setup(config, cfg, algorithm, **changes):
    config = config.copy_and_resolve_references()
    config.unlock()
    for k, v in changes.items():
        config[k] = v
    return study.make_setup(config, cfg, algorithm)


def _run(config, setup, data, *, iterations, learning_rates=None, seeds=1):
    rates = learning_rates or study.learning_rates_of(config)[:1]
    return study.run_algorithm(setup, {"min": data}, seeds=seeds, iterations=iterations,
                               learning_rates=rates,
                               hparams=study.hparams_for(config, setup.algorithm))


@pytest.mark.parametrize("algorithm", [a for a in synthetic_config.ALL if a != "onpolicy_dpo"])
def test_every_algorithm_runs_two_iterations(built, algorithm):
    config, cfg, _, task_map, _ = built
    setup = _setup(config, cfg, algorithm)
    result, _ = _run(config, setup, task_map["min"][0], iterations=2)
    m = result["min"]
    assert m["gold"].shape == (1, 2)
    for name, v in m.items():
        assert np.all(np.isfinite(v)), name
    assert np.all(m["grad_norm"] > 0)


def test_onpolicy_dpo_shortens_min_length(built):
    """Deterministic seed: 30 iterations (60 DPO steps) shorten responses on Min Length."""
    config, cfg, _, task_map, _ = built
    setup = _setup(config, cfg, "onpolicy_dpo", prompts_per_iteration=4, minibatch_prompts=4,
                   samples_per_prompt=4, reuse=2, iterations_per_chunk=10)
    result, _ = _run(config, setup, task_map["min"][0], iterations=30, learning_rates=(3e-3,))
    m = result["min"]
    assert np.all(np.isfinite(m["loss"]))
    start, end = m["length"][0, :5].mean(), m["length"][0, -5:].mean()
    assert end < 0.6 * start, (start, end)


def test_learning_rate_sweep_is_one_compiled_program(built):
    """seeds × learning rates run as one vmapped program; new rates and new loss
    hyperparameters reuse it (the jitted chunk compiles once for that number of runs). Each run
    equals the same rate run alone, and different rates give different runs."""
    config, cfg, _, task_map, _ = built
    setup = _setup(config, cfg, "onpolicy_dpo", iterations_per_chunk=1)
    _, chunk = study.compiled(setup)
    assert chunk._cache_size() == 0
    sweep, _ = _run(config, setup, task_map["min"][0], iterations=2, seeds=2,
                    learning_rates=(1e-4, 3e-2))
    assert sweep["min"]["loss"].shape == (4, 2)
    other = config.copy_and_resolve_references()
    other.unlock()
    other.hparams.beta = 0.5
    _run(other, setup, task_map["min"][0], iterations=1, seeds=2, learning_rates=(1e-3, 1e-2))
    assert chunk._cache_size() == 1
    alone, _ = _run(config, setup, task_map["min"][0], iterations=2, learning_rates=(3e-2,))
    np.testing.assert_allclose(alone["min"]["loss"][0], sweep["min"]["loss"][2], rtol=1e-5)
    assert not np.allclose(sweep["min"]["loss"][1], sweep["min"]["loss"][3])


def test_cli_learning_rate_override_is_traced(tmp_path):
    """`python -m synthetic --config.learning_rate=...`: one rate for every algorithm, a traced
    value (checked through the study's setup and validation, not a subprocess)."""
    config = synthetic_config.get_config("tiny")
    config.unlock()
    config.learning_rate = 2e-3
    study.validate(config)
    assert study.learning_rates_of(config) == (2e-3,)
    assert "learning_rate" not in {f.name for f in dataclasses.fields(study.Setup)}
    config.hparams.betta = 1.0
    with pytest.raises(ValueError, match="did you mean 'beta'"):
        study.validate(config)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("field,value,message", [
    ("algorithms", ("onpolicy_dpo", "nope"), "unknown algorithm"),
    ("algorithms", ("offline_bofn",), "not supported"),
    ("tasks", ("min", "R1"), "config.tasks"),
    ("iterations", 15, "multiple of config.iterations_per_chunk"),
    ("samples_per_prompt", 1, "samples_per_prompt"),
])
def test_bad_config_fails_before_compilation(field, value, message):
    config = synthetic_config.get_config("tiny")
    config.unlock()
    config[field] = value
    with pytest.raises(ValueError, match=message):
        study.validate(config)


def test_bad_learning_rate_and_beta_are_named():
    config = synthetic_config.get_config("tiny")
    config.unlock()
    config.learning_rate_grid = (1e-4, 0.0)
    with pytest.raises(ValueError, match="learning_rate_grid"):
        study.validate(config)
    config = synthetic_config.get_config("tiny")
    config.unlock()
    config.hparams.beta = -1.0
    with pytest.raises(ValueError, match="hparams.beta"):
        study.validate(config)
    with pytest.raises(ValueError, match="unknown configs/synthetic.py argument"):
        synthetic_config.get_config("bogus")



def test_token_bandit_reference_moves_towards_cauchy_histogram(tmp_path):
    """The token bandit's SFT (soft target π_ref per token) lowers KL(π_ref ‖ π) at every
    response position, starting from a near-uniform random init."""
    from modeseek import decoder as dec
    from synthetic import models

    cfg = models.token_model_config(num_layers=1)
    probs = tasks.cauchy_histogram()
    tok, mask = tasks.token_sft_data(np.random.default_rng(0), 256, probs, 9)

    def kl(params):
        logq = jax.nn.log_softmax(dec.forward(params, cfg, jnp.asarray(tok[:32]))[:, :-1], -1)
        return float(jnp.mean(jnp.sum(probs * (np.log(probs) - logq), -1)))

    init = dec.init_params(jax.random.split(jax.random.key(0))[0], cfg)
    params, losses = models.train_reference(jax.random.key(0), cfg, tok, mask, steps=40,
                                            batch=16, learning_rate=1e-2, soft_target=probs)
    assert losses[-5:].mean() < losses[:5].mean()
    assert kl(params) < 0.5 * kl(init)
