"""Run-folder and config guards wired into `python -m llm` (issue 12): bad configs refused before
compiling, finished stages never overwritten, --resume compares configs, preemption exits 75,
the reference log-prob cache is keyed by its inputs, a corrupt latest checkpoint falls back."""

import json
import math
import os
import subprocess
import sys

import pytest

from llm import run_folder, train
from llm.config_checks import ConfigError
from tests.test_llm_train import TIMING, metrics_of, offline_stage, onpolicy_stage, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE = ["--config", "configs/llm.py:tiny", "--stages", "offline_dpo", "--config.eval.every=0",
           "--config.stages.offline_dpo.batch_size=4", "--config.checkpoint_every=100"]


def cli(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "llm", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def refused(proc, *phrases):
    """Exit 2 with a one-line error (no traceback) containing every phrase."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(line) == 1, proc.stderr[-2000:]
    for phrase in phrases:
        assert phrase in line[0], line[0]


@pytest.mark.parametrize("args, phrases", [
    (["--config.stages.offline_dpo.learning_rat=1"], ["learning_rat", "did you mean "
                                                      "'learning_rate'"]),
    (["--config.stages.offline_dpo.batch_size=0"], ["offline_dpo.batch_size must be"]),
    (["--stages", "nope"], ["--stages: unknown name 'nope'"]),
    (["--resume"], ["holds no run to resume"]),
])
def test_bad_command_lines_are_refused_in_one_line_before_compiling(tmp_path, args, phrases):
    workdir = tmp_path / "typo"
    proc = cli(*OFFLINE, "--workdir", str(workdir), *args)
    refused(proc, *phrases)
    assert not (workdir / "offline_dpo").exists()


def test_dry_run_prints_every_stage_plan_and_creates_nothing(tmp_path):
    proc = cli("--config", "configs/llm.py:tiny", "--workdir", str(tmp_path / "w"), "--dry_run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("dry run:")
    for name in ("reward_model", "onpolicy_dpo", "offline_dpo", "pref_ft"):
        assert name in proc.stdout
    assert not (tmp_path / "w").exists()


def _stage_files(stage_dir):
    out = {}
    for root, _, files in os.walk(stage_dir):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[p] = (fh.read(), os.stat(p).st_mtime_ns)
    return out


def test_finished_stage_is_never_overwritten(tmp_path):
    """Issue 12 case 2: a rerun of a finished 1-step stage, without --resume (refused: the
    workdir holds a run) or with it (skipped), leaves params, summary and metrics untouched."""
    workdir = tmp_path / "run"
    args = [*OFFLINE, "--workdir", str(workdir), "--config.stages.offline_dpo.num_steps=1"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "memory plan per device (offline_dpo)" in proc.stdout  # checked before compiling
    stage_dir = workdir / "offline_dpo"
    before = _stage_files(stage_dir)
    assert any("params" in p for p in before) and (stage_dir / run_folder.DONE_MARKER).exists()
    refused(cli(*args), "already holds a run", "--resume", "--workdir")
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished earlier; skipping it" in proc.stdout
    assert _stage_files(stage_dir) == before  # same bytes, same mtimes


def test_preemption_exits_75_and_resume_refuses_a_changed_config(tmp_path):
    """SIGTERM → checkpoint and exit 75; --resume with a changed learning rate is refused
    naming the field, and with --allow_config_change it trains on, the change logged with the
    step it took effect at; config.json stays as first stored."""
    workdir = tmp_path / "run"
    args = [*OFFLINE, "--workdir", str(workdir), "--config.stages.offline_dpo.num_steps=2"]
    proc = cli(*args, "--config.stages.offline_dpo.preempt_at_step=1")
    assert proc.returncode == run_folder.PREEMPTED_EXIT_CODE == 75, proc.stderr[-2000:]
    stored = (workdir / "config.json").read_text()
    changed = [*args, "--resume", "--config.stages.offline_dpo.learning_rate=0.1"]
    refused(cli(*changed), "stages.offline_dpo.learning_rate", "--allow_config_change")
    proc = cli(*changed, "--allow_config_change")
    assert proc.returncode == 0, proc.stderr[-2000:]
    logged = [json.loads(x) for x in open(workdir / "config_changes.jsonl")]
    assert [(c["key"], c["old"], c["new"], c["affects_results"], c["step"], c["stage"])
            for c in logged] == [
        ("stages.offline_dpo.learning_rate", 0.001, 0.1, True, 1, "offline_dpo"),
        ("stages.offline_dpo.preempt_at_step", 1, 0, False, 1, "offline_dpo")]  # neutral
    assert (workdir / "config.json").read_text() == stored
    assert [r["step"] for r in metrics_of(str(workdir / "offline_dpo"))] == [1, 2]


def _write_pairs(path, swap):
    src = os.path.join(ROOT, "llm", "data", "min_length_train.jsonl")
    with open(src) as f, open(path, "w") as out:
        for line in list(f)[:16]:
            row = json.loads(line)
            if swap:
                row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            out.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}) + "\n")


def test_reference_cache_of_other_data_is_not_reused(tmp_path):
    """Issue 12 case 1: a run leaves the cache behind, the stage folder is deleted, and a run
    with chosen/rejected swapped starts at loss log 2 (policy = reference), not a stale value."""
    workdir = tmp_path / "run"
    losses = []
    for swap in (False, True):
        data = tmp_path / f"pairs-{swap}.jsonl"
        _write_pairs(data, swap)
        cfg = tiny_config()
        cfg.data.train = str(data)
        stage = offline_stage(cfg, num_steps=1, train_rows=0)
        stage_dir = workdir / "offline_dpo"
        assert train.run_stage(cfg, stage, str(stage_dir))["status"] == "done"
        losses.append(metrics_of(str(stage_dir))[0]["loss"])
        assert (workdir / "cache" / "offline_dpo.ref_logps.npz").exists()
        for root, dirs, files in os.walk(stage_dir, topdown=False):  # keep the cache only
            for f in files:
                os.remove(os.path.join(root, f))
            for d in dirs:
                os.rmdir(os.path.join(root, d))
        os.rmdir(stage_dir)
    assert losses == pytest.approx([math.log(2)] * 2, abs=1e-4)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
    """Kill at step 3 with checkpoints at 2 and 3, damage step 3's files, resume: step 3 is
    moved aside with a warning naming it, the run resumes from step 2, and every metric equals
    an uninterrupted run's."""
    def config():
        cfg = tiny_config()
        cfg.checkpoint_every = 1
        return cfg

    cfg = config()
    train.run_stage(cfg, offline_stage(cfg), str(tmp_path / "full" / "stage"))
    cfg = config()
    stage = offline_stage(cfg, preempt_at_step=3)
    killed = tmp_path / "killed" / "stage"
    assert train.run_stage(cfg, stage, str(killed))["status"] == "preempted"
    damaged = 0
    for root, _, files in os.walk(killed / "checkpoints" / "3" / "state"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"\0garbage")
            damaged += 1
    assert damaged
    stage.preempt_at_step = 0
    assert train.run_stage(cfg, stage, str(killed), resume=True)["status"] == "done"
    assert "resuming from checkpoint step 2" in capfd.readouterr().out
    assert os.listdir(str(killed / "checkpoints") + ".corrupt")[0].startswith("3-")
    expected = metrics_of(str(tmp_path / "full" / "stage"))
    assert metrics_of(str(killed)) == expected and [r["step"] for r in expected] == [1, 2, 3, 4]
    assert all(not k.startswith(TIMING) for r in expected for k in r)


def test_onpolicy_iterations_without_pairs_stop_the_run(tmp_path):
    """Issue 12 case 4: a reward that ties every sample forms no pair; rollout/pairs logs 0
    and the second consecutive pair-less iteration stops the run naming the cause."""
    cfg = tiny_config()
    cfg.reward.fn = "tests.reward_fns:constant"
    stage = onpolicy_stage(cfg, num_iterations=3, reuse=1, minibatch_prompts=2,
                           max_zero_pair_iterations=2)
    stage_dir = str(tmp_path / "tied" / "stage")
    with pytest.raises(ConfigError, match="iteration 2: 2 consecutive iterations formed no "
                                          "usable pair"):
        train.run_stage(cfg, stage, stage_dir)
    rows = metrics_of(stage_dir)
    assert [(r["step"], r["rollout/pairs"], r["rollout/groups"]) for r in rows] == [(1, 0, 0)]


def test_prompt_and_response_longer_than_the_context_are_refused_at_load(tmp_path):
    """The model's context is known only once it is loaded: the stage refuses in one line."""
    refused(cli(*OFFLINE, "--workdir", str(tmp_path / "run"), "--config.data.max_prompt_len=1000"),
            "config.data.max_prompt_len=1000 + config.data.max_response_len",
            "exceeds the model's context of 1024 tokens")
