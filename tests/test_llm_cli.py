"""`python -m llm` end to end on the tiny config: reward model (Bradley–Terry) then on-policy DPO
labelled by it, metrics.jsonl + TensorBoard + report.md written."""

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_reward_model_then_onpolicy_dpo(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "llm", "--config", "configs/llm.py:tiny", "--workdir",
           str(workdir), "--stages", "reward_model,onpolicy_dpo",
           "--config.stages.reward_model.num_steps=3",
           "--config.stages.onpolicy_dpo.num_iterations=2",
           "--config.stages.onpolicy_dpo.max_new_tokens=8", "--config.eval.max_new_tokens=8",
           "--config.eval.num_prompts=4", "--config.eval.batch_size=32"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [s["stage"] for s in summaries] == ["reward_model", "onpolicy_dpo"]
    assert all(s["status"] == "done" for s in summaries)

    rm_rows = [json.loads(x) for x in open(workdir / "reward_model" / "metrics.jsonl")]
    assert 0.0 <= rm_rows[-1]["eval/accuracy"] <= 1.0  # held-out pairs
    rows = [json.loads(x) for x in open(workdir / "onpolicy_dpo" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2]
    last = rows[-1]
    for key in ("time_generation", "time_scoring", "time_update", "tokens_per_s",
                "rollout/proxy_reward", "rollout/length", "eval/length", "loss"):
        assert key in last, key
    # the proxy reward is the reward model's score, not the gold −length
    assert last["rollout/proxy_reward"] != last["rollout/gold_reward"]
    assert glob.glob(str(workdir / "onpolicy_dpo" / "tensorboard" / "events.out.tfevents.*"))
    assert os.path.isdir(workdir / "onpolicy_dpo" / "params")
    report = (workdir / "report.md").read_text()
    assert "onpolicy_dpo" in report and "length.png" in report
    assert (workdir / "length.png").exists()


def test_user_reward_function_trains_without_a_reward_model_stage(tmp_path):
    """`--config.reward.fn=module:function` (TRL's convention) is the training reward: the
    on-policy stage runs with no reward-model stage, the user function scores on the host
    (timed), and the gold reward (−length) is still logged beside it."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "llm", "--config", "configs/llm.py:tiny", "--workdir",
           str(workdir), "--stages", "onpolicy_dpo",
           "--config.reward.fn=tests.reward_fns:count_a",
           "--config.stages.onpolicy_dpo.num_iterations=1",
           "--config.stages.onpolicy_dpo.max_new_tokens=8", "--config.eval.every=0"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (workdir / "reward_model").exists()
    rows = [json.loads(x) for x in open(workdir / "onpolicy_dpo" / "metrics.jsonl")]
    last = rows[-1]
    assert last["time_reward_host"] > 0
    # count_a subtracts a tenth of the (long, chat-less) prompt: far below any −length
    assert last["rollout/proxy_reward"] < -1 and last["rollout/proxy_reward"] != last[
        "rollout/gold_reward"]
    assert last["rollout/gold_reward"] == last["rollout/gold/neg_length"] == -last[
        "rollout/length"]
