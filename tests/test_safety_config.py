"""Config validation at the edge (llm.config_checks, modeseek._checks.suggest_key): every bad
field fails before compilation, naming `config.<path>`; unknown names get the closest known one;
on-policy configs that can never form pairs are refused; zero-pair iterations are counted."""

import copy
import itertools

import jax
import numpy as np
import pytest

from llm.config_checks import (
    ConfigError,
    PairStarvation,
    check_context_fits,
    check_overrides,
    count_pairs,
    override_keys,
    validate_llm_config,
)
from modeseek._checks import check_known_keys, suggest_key


def _stage(name, kind, **kw):
    s = dict(name=name, kind=kind, algorithm="", init="", reward_model="", train_rows=0,
             num_steps=8, batch_size=4, num_iterations=4, prompts_per_iteration=4,
             samples_per_prompt=2, reuse=1, minibatch_prompts=2, max_new_tokens=16,
             temperature=1.0, top_k=0, top_p=1.0, learning_rate=1e-5, warmup_steps=0,
             weight_decay=0.0, accumulation_steps=1)
    return s | kw


def _config():
    return {"checkpoint_every": 10, "data": {"max_prompt_len": 32, "max_response_len": 24},
            "eval": {"every": 2, "max_new_tokens": 8, "temperature": 1.0, "batch_size": 4},
            "stage_order": ("reward_model", "onpolicy_dpo", "offline_dpo"),
            "stages": {"reward_model": _stage("reward_model", "reward_model"),
                       "onpolicy_dpo": _stage("onpolicy_dpo", "onpolicy",
                                              algorithm="onpolicy_dpo",
                                              reward_model="reward_model"),
                       "offline_dpo": _stage("offline_dpo", "offline",
                                             algorithm="offline_dpo")}}


def test_valid_config_and_the_shipped_configs_pass():
    import configs.llm

    validate_llm_config(_config(), data_parallel=2)
    for name in ("tiny", "smollm2_min_length", "pythia_alpacafarm", "mistral_ultrafeedback",
                 "qwen2_ultrafeedback"):
        validate_llm_config(configs.llm.get_config(name))


@pytest.mark.parametrize("path, value, message", [
    ("stages.offline_dpo.batch_size", 0, r"offline_dpo\.batch_size must be an integer >= 1"),
    ("stages.offline_dpo.batch_size", 5, r"batch_size=5 is not a multiple of the 2 data-par"),
    ("stages.offline_dpo.num_steps", 0, r"num_steps \(0 would save untrained parameters"),
    ("stages.onpolicy_dpo.num_iterations", 0, r"onpolicy_dpo\.num_iterations"),
    ("stages.offline_dpo.train_rows", -1, r"train_rows must be an integer >= 0, got -1"),
    ("stages.offline_dpo.weight_decay", -0.1, r"weight_decay must be >= 0"),
    ("stages.offline_dpo.learning_rate", 0.0, r"learning_rate must be > 0"),
    ("stages.offline_dpo.warmup_steps", 8, r"warmup_steps=8 >= the stage's 8 optimizer updates"),
    ("stages.onpolicy_dpo.warmup_steps", 8, r"warmup_steps=8 >= the stage's 8 optimizer"),
    ("stages.onpolicy_dpo.samples_per_prompt", 1, r"samples_per_prompt=1: onpolicy_dpo"),
    ("stages.onpolicy_dpo.temperature", 0.0, r"temperature=0: greedy sampling"),
    ("stages.onpolicy_dpo.fuse_iteration", True, r"onpolicy_dpo\.fuse_iteration: one compiled "
                                                 r"iteration .* set trim_responses=False"),
    ("stages.onpolicy_dpo.temperature", -1.0, r"onpolicy_dpo\.temperature must be >= 0"),
    ("stages.onpolicy_dpo.top_p", 0.0, r"onpolicy_dpo\.top_p must lie in \(0, 1\]"),
    ("stages.onpolicy_dpo.top_k", -1, r"onpolicy_dpo\.top_k must be an integer >= 0"),
    ("stages.onpolicy_dpo.max_new_tokens", 0, r"onpolicy_dpo\.max_new_tokens must be"),
    ("stages.onpolicy_dpo.minibatch_prompts", 3, r"prompts_per_iteration=4 is not a multiple"),
    ("stages.onpolicy_dpo.reward_model", "", r"on-policy stage needs a training reward"),
    ("stages.onpolicy_dpo.reward_model", "offline_dpo", r"reward_model \(a stage that runs "
                                                        r"earlier\): unknown name 'offline_dpo'"),
    ("stages.offline_dpo.init", "nope", r"init .*unknown name 'nope' \(known: onpolicy_dpo, "
                                        r"reward_model\)"),
    ("stages.offline_dpo.init", "reward_modle", r"did you mean 'reward_model'"),
    ("stages.offline_dpo.algorithm", "ofline_dpo", r"did you mean 'offline_dpo'"),
    ("stages.offline_dpo.algorithm", "onpolicy_dpo", r"onpolicy_dpo is on-policy; it needs "
                                                     r"kind='onpolicy'"),
    ("stages.offline_dpo.kind", "ofline", r"kind: unknown name 'ofline' \(did you mean "
                                          r"'offline'"),
    ("stage_order", ("reward_model", "nope"), r"config.stage_order: unknown name 'nope'"),
    ("eval.temperature", -1.0, r"config\.eval\.temperature must be >= 0"),
    ("checkpoint_every", -1, r"checkpoint_every must be >= 0"),
])
def test_bad_fields_are_named(path, value, message):
    cfg = copy.deepcopy(_config())
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError, match=message):
        validate_llm_config(cfg, data_parallel=2 if "data-par" in message else 1)


def test_onpolicy_without_reward_model_stage_is_accepted_when_a_reward_is_named():
    """`--config.reward.fn=...` (or a rule / path, or a gold reward) trains the on-policy stage
    without a reward-model stage, as llm.models.StageEnv.rewards allows."""
    for extra in ({"reward": {"fn": "tests.reward_fns:count_a", "rule": "", "path": ""}},
                  {"gold": {"neg_length": {"rule": "neg_length"}}}):
        cfg = copy.deepcopy(_config()) | extra
        cfg["stages"]["onpolicy_dpo"]["reward_model"] = ""
        validate_llm_config(cfg)
    cfg = copy.deepcopy(_config()) | {"reward": {"fn": "", "rule": "", "path": ""}}
    cfg["stages"]["onpolicy_dpo"]["reward_model"] = ""
    with pytest.raises(ConfigError, match="needs a training reward"):
        validate_llm_config(cfg)


def test_ppo_may_sample_once_and_only_running_stages_are_checked():
    cfg = _config()
    cfg["stages"]["onpolicy_dpo"].update(algorithm="ppo", samples_per_prompt=1)
    validate_llm_config(cfg)
    cfg["stages"]["offline_dpo"]["batch_size"] = 0
    validate_llm_config(cfg, stages=["onpolicy_dpo"])
    with pytest.raises(ConfigError, match=r"--stages: unknown name 'onpolicy' \(did you mean "
                                          r"'onpolicy_dpo'"):
        validate_llm_config(cfg, stages=["onpolicy"])


def test_unknown_override_keys_suggest_the_closest():
    cfg = _config()
    argv = ["python", "--config", "configs/llm.py:tiny", "--config.foo=1",
            "--config.stages.offline_dpo.learning_rat", "0.1", "--workdir=x"]
    assert override_keys(argv) == ["foo", "stages.offline_dpo.learning_rat"]
    check_overrides(cfg, ["stages.offline_dpo.learning_rate", "checkpoint_every"])
    with pytest.raises(ConfigError, match=r"--config\.stages\.offline_dpo\.learning_rat: config"
                                          r"\.stages\.offline_dpo has no field 'learning_rat' "
                                          r"\(did you mean 'learning_rate'\?\)"):
        check_overrides(cfg, ["stages.offline_dpo.learning_rat"])
    with pytest.raises(ConfigError, match=r"config has no field 'foo' \(known: checkpoint_every"):
        check_overrides(cfg, ["foo"])
    with pytest.raises(ConfigError, match=r"config\.checkpoint_every has no field 'x'"):
        check_overrides(cfg, ["checkpoint_every.x"])


def test_suggest_key_and_check_known_keys():
    assert suggest_key("learning_rat", ["batch_size", "learning_rate"]) == \
        " (did you mean 'learning_rate'?)"
    assert suggest_key("zzz", ["b", "a"]) == " (known: a, b)"
    assert suggest_key("zzz", [f"k{i:02d}" for i in range(25)]).endswith("k19, ...)")
    check_known_keys("stage", {"a": 1}, ["a", "b"])
    with pytest.raises(ValueError, match=r"^stage: unknown key 'bb' \(did you mean 'b'\?\)"):
        check_known_keys("stage", {"a": 1, "bb": 2}, ["a", "b"])


def _brute_force_pairs(rewards, valid):
    pairs, groups = 0, 0
    for r, v in zip(rewards, valid):
        n = sum(1 for i, j in itertools.combinations(range(len(r)), 2)
                if v[i] and v[j] and r[i] != r[j])
        pairs, groups = pairs + n, groups + (n > 0)
    return pairs, groups


def test_count_pairs_hand_example_and_brute_force():
    rewards = np.array([[1.0, 1.0, 2.0], [0.5, 0.5, 0.5], [3.0, 1.0, 2.0]])
    valid = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1]], bool)
    # prompt 0: (0,2), (1,2) -> 2; prompt 1: all tied -> 0; prompt 2: only (0,2) valid -> 1
    assert tuple(map(int, jax.jit(count_pairs)(rewards, valid))) == (3, 2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        r = rng.integers(0, 3, (6, 4)).astype(np.float32)
        v = rng.random((6, 4)) < 0.7
        assert tuple(map(int, count_pairs(r, v))) == _brute_force_pairs(r, v)
    # samples_per_prompt = 1 or greedy (identical samples): never a pair
    assert int(count_pairs(np.ones((4, 1)), np.ones((4, 1), bool))[0]) == 0


def test_pair_starvation_after_k_consecutive_iterations():
    guard = PairStarvation(3)
    for it, pairs in enumerate([0, 0, 5, 0, 0], start=1):
        guard.update(pairs, it)
    with pytest.raises(ConfigError, match="iteration 6: 3 consecutive iterations formed no"):
        guard.update(0, 6)
    off = PairStarvation(0)
    for it in range(10):
        off.update(0, it)
    with pytest.raises(ConfigError, match="max_zero_pair_iterations"):
        PairStarvation(-1)


def test_prompt_plus_response_must_fit_the_model_context():
    cfg = _config()
    check_context_fits(cfg, 56)  # 32 + 24; on-policy 32 + 16, eval 32 + 8
    with pytest.raises(ConfigError, match=r"max_prompt_len=32 \+ config\.data\.max_response_len"
                                          r"=24 exceeds the model's context of 55"):
        check_context_fits(cfg, 55)
    cfg["data"]["max_response_len"] = 8
    with pytest.raises(ConfigError, match=r"stages\.onpolicy_dpo\.max_new_tokens=16 exceeds"):
        check_context_fits(cfg, 47)
    check_context_fits(cfg, 47, stages=["offline_dpo"])  # the on-policy stage does not run
