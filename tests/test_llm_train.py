"""Stage loops on a tiny model (byte tokenizer, embedded Min Length data): kill-and-resume equals
an uninterrupted run (offline and on-policy), the NaN guard keeps the last good checkpoint, and
PPO trains."""

import json
import os

import numpy as np
import pytest

from configs import llm as llm_configs
from llm import checkpointing, run_folder, train
from llm.runtime import NonFiniteError

# wall-clock and throughput metrics differ between runs; everything else must match exactly
TIMING = ("time_", "tokens_per_s", "generation_tokens_per_s", "update_mfu")


def tiny_config(**eval_overrides):
    cfg = llm_configs.get_config("tiny")
    cfg.eval.update(every=0, **eval_overrides)
    cfg.checkpoint_every = 100
    cfg.data.ref_batch_size = 16
    return cfg


def offline_stage(cfg, **overrides):
    s = cfg.stages.offline_dpo
    s.update({"num_steps": 4, "batch_size": 4, **overrides})
    return s


def onpolicy_stage(cfg, **overrides):
    s = cfg.stages.onpolicy_dpo
    s.update({"reward_model": "", "num_iterations": 3, "prompts_per_iteration": 2,
              "samples_per_prompt": 2, "minibatch_prompts": 1, "reuse": 2, "max_new_tokens": 8,
              # an untrained tiny model's 8-token samples often tie in length (the gold reward):
              # these loop tests are not about pair starvation (tests/test_llm_run_safety.py)
              "max_zero_pair_iterations": 0, **overrides})
    return s


def metrics_of(stage_dir):
    with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _interrupted_then_resumed(tmp_path, make_stage, kill_at):
    cfg = tiny_config()
    full = train.run_stage(cfg, make_stage(cfg), str(tmp_path / "full" / "stage"))
    assert full["status"] == "done"
    cfg = tiny_config()
    stage = make_stage(cfg, preempt_at_step=kill_at)
    killed_dir = str(tmp_path / "killed" / "stage")
    first = train.run_stage(cfg, stage, killed_dir)
    assert first["status"] == "preempted"  # a real SIGTERM, handled by saving a checkpoint
    assert checkpointing.RunCheckpointer(os.path.join(killed_dir, "checkpoints"),
                                         every=1).latest_step() == kill_at
    with pytest.raises(run_folder.RunFolderError, match="--resume"):
        train.run_stage(cfg, stage, killed_dir)  # no silent restart over a checkpoint
    stage.preempt_at_step = 0
    resumed = train.run_stage(cfg, stage, killed_dir, resume=True)
    assert resumed["status"] == "done"
    expected, got = metrics_of(str(tmp_path / "full" / "stage")), metrics_of(killed_dir)
    assert len(got) == len(expected)
    assert got == expected  # exact equality of every loss / metric, step by step


def test_offline_kill_and_resume_equals_uninterrupted(tmp_path):
    _interrupted_then_resumed(tmp_path, offline_stage, kill_at=2)
    with np.load(tmp_path / "killed" / "cache" / "offline_dpo.ref_logps.npz") as z:
        cache = z["value"]
    assert np.all(np.isfinite(cache)) and np.all(cache < 0)  # every row has its reference value


def test_onpolicy_kill_and_resume_equals_uninterrupted(tmp_path):
    _interrupted_then_resumed(tmp_path, onpolicy_stage, kill_at=1)
    rows = metrics_of(str(tmp_path / "killed" / "stage"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["rollout/length"] >= 1 for r in rows)
    assert all(r["rollout/gold_reward"] == -r["rollout/length"] for r in rows)
    # P=2 prompts × N=2 samples: one possible pair per prompt, so pairs == non-tied groups
    assert all(0 <= r["rollout/pairs"] == r["rollout/groups"] <= 2 for r in rows)


def test_one_program_iteration_matches_the_phases(tmp_path):
    """`fuse_iteration`: the first iteration equals the phase-by-phase one (same keys,
    untrimmed): the same samples, so the same token-derived metrics, and the same update at
    float tolerance (the two are different XLA programs). Later iterations start from
    parameters that differ by rounding after Adam, so only the first is compared; resuming
    runs through the same stage loop for both (test above)."""
    runs = {}
    for fuse in (True, False):
        cfg = tiny_config()
        stage_dir = str(tmp_path / str(fuse) / "stage")
        stage = onpolicy_stage(cfg, fuse_iteration=fuse, trim_responses=False, num_iterations=1)
        assert train.run_stage(cfg, stage, stage_dir)["status"] == "done"
        runs[fuse] = metrics_of(stage_dir)[0]
    got, want = runs[True], runs[False]
    assert set(got) == set(want)
    for name in ("rollout/length", "rollout/gold_reward", "rollout/pairs", "rollout/tokens",
                 "rollout/sequence_length"):
        assert got[name] == want[name], name
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_one_program_iteration_refuses_host_rewards(tmp_path):
    from llm.config_checks import ConfigError

    cfg = tiny_config()
    cfg.reward.fn = "tests.engine_reward_fns:nan_on_second_call"
    stage = onpolicy_stage(cfg, fuse_iteration=True, trim_responses=False)
    with pytest.raises(ConfigError, match=r"onpolicy_dpo\.fuse_iteration: the rewards "
                                          r"\['nan_on_second_call'\] read decoded text"):
        train.run_stage(cfg, stage, str(tmp_path / "host" / "stage"))


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config()
    cfg.checkpoint_every = 1
    # an absurd step size: parameters overflow after the first update, the second loss is NaN
    stage = offline_stage(cfg, learning_rate=1e30, max_grad_norm=None, num_steps=3)
    _stops_after_first_checkpoint(cfg, stage, str(tmp_path / "nan" / "stage"),
                                  NonFiniteError, "at step 2")


def _stops_after_first_checkpoint(cfg, stage, stage_dir, error, message):
    """The run raises `error` at step 2; step 1's checkpoint is the last, no summary."""
    with pytest.raises(error, match=message):
        train.run_stage(cfg, stage, stage_dir)
    ckpt = checkpointing.RunCheckpointer(os.path.join(stage_dir, "checkpoints"), every=1)
    assert ckpt.latest_step() == 1
    assert not os.path.exists(os.path.join(stage_dir, "summary.json"))


def test_ppo_trains_with_value_head_and_adaptive_kl(tmp_path):
    cfg = tiny_config()
    stage = onpolicy_stage(cfg, algorithm="ppo", num_iterations=2, learning_rate=1e-3)
    stage.hparams.update(kl_coef=0.1, kl_target=1e-3, kl_horizon=10)
    summary = train.run_stage(cfg, stage, str(tmp_path / "ppo" / "stage"))
    assert summary["status"] == "done"
    rows = metrics_of(str(tmp_path / "ppo" / "stage"))
    assert rows[0]["kl_coef"] == pytest.approx(0.1)
    assert rows[0]["ppo/clip_fraction"] >= 0 and np.isfinite(rows[1]["ppo/value_loss"])
    # KL above target grows the coefficient, below target shrinks it (clipped at ±20%)
    assert rows[1]["kl_coef"] != rows[0]["kl_coef"]


@pytest.mark.parametrize("name,gold,kind", [
    ("smollm2_min_length", "neg_length", "rule"), ("tiny", "neg_length", "rule"),
    ("pythia_alpacafarm", "alpacafarm_rm", "hf_model"),
    ("mistral_ultrafeedback", "ultrarm", "hf_model"),
    ("qwen2_ultrafeedback", "ultrarm", "hf_model")])
def test_configs_name_their_gold_reward(name, gold, kind):
    """Gold rewards are data in each config (evaluation only); the training reward defaults to
    the stage's reward-model stage (cfg.reward names none until overridden)."""
    cfg = llm_configs.get_config(name)
    assert list(cfg.gold) == [gold] and cfg.gold[gold].kind == kind
    assert not (cfg.reward.fn or cfg.reward.rule or cfg.reward.path)
    assert "ppo" not in cfg.stages or cfg.stages.ppo.hparams.kl_target > 0


def test_bad_reward_stops_the_run_naming_it_and_keeps_the_last_checkpoint(tmp_path):
    """A user reward returning NaN at iteration 2 stops the on-policy stage with RewardError
    naming the reward; the checkpoint of iteration 1 is the last one, no summary is written."""
    from llm.reward_types import RewardError

    cfg = tiny_config()
    cfg.checkpoint_every = 1
    cfg.reward.fn = "tests.engine_reward_fns:nan_on_second_call"
    stage = onpolicy_stage(cfg, num_iterations=3, reuse=1, minibatch_prompts=2)
    _stops_after_first_checkpoint(cfg, stage, str(tmp_path / "bad" / "stage"), RewardError,
                                  "nan_on_second_call.*non-finite")
