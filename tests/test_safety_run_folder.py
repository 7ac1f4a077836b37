"""Run-folder guards (llm.run_folder): keyed caches, atomic writes, never-overwritten stages,
--resume config comparison, the preemption exit code and corrupt-checkpoint fallback."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm import run_folder as rf
from llm.checkpointing import RunCheckpointer


def test_preempted_exit_code_is_ex_tempfail():
    assert rf.PREEMPTED_EXIT_CODE == 75  # sysexits.h EX_TEMPFAIL, distinct from 0/1/2
    assert rf.PREEMPTED_EXIT_CODE not in (0, 1, 2, 124, 137, 143)


# ------------------------------------------------------------------ fingerprint
def test_fingerprint_matches_hashlib_and_tracks_every_input(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    key = rf.fingerprint(files=[data], fields={"max_len": 8, "model": "tiny"})
    # independent recomputation of the documented layout
    h = hashlib.sha256()
    h.update(b"file[0]||")
    h.update(data.read_bytes())
    h.update(b'fields|28|{"max_len":8,"model":"tiny"}')
    assert key == h.hexdigest()
    # same inputs, same key; field order does not matter; renaming the file keeps the key
    assert key == rf.fingerprint(files=[data], fields={"model": "tiny", "max_len": 8})
    moved = tmp_path / "moved.jsonl"
    os.rename(data, moved)
    assert key == rf.fingerprint(files=[moved], fields={"model": "tiny", "max_len": 8})
    # every input changes it
    moved.write_text('{"prompt": "a", "chosen": "c", "rejected": "b"}\n')  # swapped pair
    assert key != rf.fingerprint(files=[moved], fields={"model": "tiny", "max_len": 8})
    assert key != rf.fingerprint(files=[moved], fields={"model": "tiny", "max_len": 9})
    a = np.arange(4, dtype=np.float32)
    assert rf.fingerprint(arrays={"x": a}) != rf.fingerprint(arrays={"x": a.astype(np.float64)})
    assert rf.fingerprint(arrays={"x": a}) != rf.fingerprint(arrays={"x": a.reshape(2, 2)})
    assert rf.fingerprint(arrays={"x": a}) == rf.fingerprint(arrays={"x": a.copy()})


def test_fingerprint_of_a_folder_and_stat_mode(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    key = rf.fingerprint(files=[folder])
    (folder / "model.safetensors").write_bytes(b"\1" * 16)
    assert rf.fingerprint(files=[folder]) != key
    stat_key = rf.fingerprint(files=[folder], file_identity="stat")
    (folder / "extra.txt").write_text("x")
    assert rf.fingerprint(files=[folder], file_identity="stat") != stat_key
    with pytest.raises(FileNotFoundError, match="nope"):
        rf.fingerprint(files=[tmp_path / "nope"])
    with pytest.raises(TypeError, match="JSON-like"):
        rf.fingerprint(fields={"f": object()})


# ------------------------------------------------------------------ atomic writes
def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    rf.atomic_write_text(path, "old")
    rf.atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert sorted(os.listdir(path.parent)) == ["summary.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ref.npz"
    rf.atomic_write_bytes(path, b"old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        rf.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ref.npz"]  # the temp file was removed


# ------------------------------------------------------------------ keyed cache
def test_stale_reference_cache_is_recomputed_when_data_changes(tmp_path):
    """The issue's stale ref_logps case: a cache left by a run on other data is not reused."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "p", "chosen": "short", "rejected": "a longer answer"}\n')
    cache = tmp_path / "offline_dpo" / "ref_logps.npz"
    calls = []

    def compute_for(value):
        def compute():
            calls.append(value)
            return np.array([[value, -value]], np.float32)
        return compute

    key1 = rf.fingerprint(files=[data], fields={"max_len": 32})
    first = rf.load_or_compute_cached(cache, key1, compute_for(1.0))
    again = rf.load_or_compute_cached(cache, key1, compute_for(99.0))  # reused, not recomputed
    np.testing.assert_array_equal(first, again)
    assert calls == [1.0]
    data.write_text('{"prompt": "p", "chosen": "a longer answer", "rejected": "short"}\n')
    key2 = rf.fingerprint(files=[data], fields={"max_len": 32})
    fresh = rf.load_or_compute_cached(cache, key2, compute_for(2.0))
    np.testing.assert_array_equal(fresh, [[2.0, -2.0]])
    assert calls == [1.0, 2.0]
    with pytest.raises(rf.StaleCacheError, match="ref_logps.npz.*other inputs.*--workdir"):
        rf.load_or_compute_cached(cache, key1, compute_for(3.0), on_mismatch="refuse")


def test_cache_without_key_or_torn_is_stale(tmp_path):
    path = tmp_path / "ref_logps.npz"
    np.savez(path, value=np.zeros(3))  # an unkeyed file, e.g. from an older version
    out = rf.load_or_compute_cached(path, "k", lambda: np.ones(3))
    np.testing.assert_array_equal(out, np.ones(3))
    path.write_bytes(b"PK\x03\x04 torn")
    np.testing.assert_array_equal(rf.load_or_compute_cached(path, "k", lambda: np.full(3, 2.0)),
                                  np.full(3, 2.0))
    np.testing.assert_array_equal(rf.load_or_compute_cached(path, "k", lambda: 1 / 0),
                                  np.full(3, 2.0))
    other = tmp_path / "not_written.npz"
    rf.load_or_compute_cached(other, "k", lambda: np.ones(1), write=False)
    assert not other.exists()


# ------------------------------------------------------------------ stage and run folders
def test_finished_stage_is_skipped_never_overwritten(tmp_path):
    stage = tmp_path / "offline_dpo"
    assert rf.claim_stage_dir(stage, resume=False) == "fresh"
    (stage / "metrics.jsonl").write_text('{"step": 1}\n')
    rf.mark_stage_done(stage, {"status": "done", "final": {"loss": 0.5}})
    for resume in (False, True):
        assert rf.claim_stage_dir(stage, resume=resume) == "skip"
    assert json.loads((stage / "summary.json").read_text())["final"]["loss"] == 0.5
    assert (stage / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_unfinished_stage_refuses_without_resume(tmp_path):
    """The issue's data-loss case: outputs but no periodic checkpoint, no done marker."""
    stage = tmp_path / "offline_dpo"
    stage.mkdir()
    (stage / "params").mkdir()
    (stage / "summary.json").write_text("{}")  # legacy run: summary without the marker
    with pytest.raises(rf.RunFolderError, match=r"offline_dpo.*--resume.*--workdir"):
        rf.claim_stage_dir(stage, resume=False)
    assert rf.claim_stage_dir(stage, resume=True) == "resume"
    assert (stage / "summary.json").read_text() == "{}"


def test_workdir_config_stored_once_and_resume_needs_a_run(tmp_path):
    config = {"seed": 0, "stages": {"dpo": {"learning_rate": 1e-5, "batch_size": 4}}}
    with pytest.raises(rf.RunFolderError, match=r"--resume.*no run to resume.*--workdir"):
        rf.claim_workdir(tmp_path / "typo", config, resume=True)
    assert not (tmp_path / "typo").exists()
    assert rf.claim_workdir(tmp_path / "run", config, resume=False) is None
    with pytest.raises(rf.RunFolderError, match="already holds a run.*--resume.*--workdir"):
        rf.claim_workdir(tmp_path / "run", {"seed": 1}, resume=False)
    assert rf.claim_workdir(tmp_path / "run", {"seed": 1}, resume=True) == config


def test_resume_refuses_result_changes_unless_allowed(tmp_path):
    """The issue's case: batch 4 -> 8 and lr -> 0.1 mid-run are refused, naming both."""
    stored = {"seed": 0, "checkpoint_every": 10,
              "stages": {"dpo": {"learning_rate": 1e-5, "batch_size": 4,
                                 "preempt_at_step": 3}}}
    new = {"seed": 0, "checkpoint_every": 5,
           "stages": {"dpo": {"learning_rate": 0.1, "batch_size": 8, "preempt_at_step": 0}}}
    with pytest.raises(rf.ConfigChangeError) as e:
        rf.compare_resume_config(stored, new, step=40)
    msg = str(e.value)
    assert "stages.dpo.batch_size: 4 -> 8" in msg and "stages.dpo.learning_rate" in msg
    assert "--allow_config_change" in msg and "checkpoint_every" not in msg
    changes = rf.compare_resume_config(stored, new, allow_change=True, step=40)
    assert {c.key: (c.old, c.new, c.affects_results, c.step) for c in changes} == {
        "checkpoint_every": (10, 5, False, 40),
        "stages.dpo.batch_size": (4, 8, True, 40),
        "stages.dpo.learning_rate": (1e-5, 0.1, True, 40),
        "stages.dpo.preempt_at_step": (3, 0, False, 40)}
    log = rf.record_config_changes(tmp_path, changes[1:2], stage="dpo")
    rf.record_config_changes(tmp_path, changes[2:3], stage="dpo")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["key"], x["old"], x["new"], x["step"], x["stage"]) for x in lines] == [
        ("stages.dpo.batch_size", 4, 8, 40, "dpo"),
        ("stages.dpo.learning_rate", 1e-5, 0.1, 40, "dpo")]
    # only neutral fields changed: accepted without the flag; identical configs: no changes
    neutral = {**stored, "checkpoint_every": 5}
    assert [c.key for c in rf.compare_resume_config(stored, neutral)] == ["checkpoint_every"]
    assert rf.compare_resume_config(stored, json.loads(json.dumps(stored))) == []


def test_resume_config_added_removed_fields_and_narrow_result_set():
    stored = {"a": {"x": 1}, "t": (1, 2)}
    new = {"a": {"y": 2}, "t": [1, 2]}  # tuple vs list: as config.json stores it, no change
    with pytest.raises(rf.ConfigChangeError, match=r"a\.x: 1 -> '<absent>'"):
        rf.compare_resume_config(stored, new)
    changes = rf.compare_resume_config(stored, new, result_fields=("b",))
    assert [(c.key, c.affects_results) for c in changes] == [("a.x", False), ("a.y", False)]


# ------------------------------------------------------------------ corrupt checkpoints
def _state(value):
    return {"w": jnp.full((4, 3), value, jnp.float32), "step": jnp.asarray(int(value))}


def _corrupt(step_dir):
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                size = f.seek(0, 2)
                f.seek(0)
                f.write(b"\xff" * max(size, 1))


def test_corrupt_latest_orbax_checkpoint_falls_back_to_previous(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt = RunCheckpointer(str(ckpt_dir), every=1, max_to_keep=2)
    rng = jax.random.key(0)
    for step in (1, 2, 3):
        ckpt.save(step, _state(float(step)), jax.random.fold_in(rng, step),
                  extra={"iteration": step})
    assert sorted(ckpt.manager.all_steps()) == [2, 3]
    _corrupt(ckpt_dir / "3")
    with pytest.raises(Exception):  # noqa: B017 -- what the loop sees today
        ckpt.restore(_state(0.0), rng, step=3)

    def quarantine(step):
        rf.quarantine_step_dir(ckpt_dir, step)
        ckpt.manager.reload()

    step, (state, key, extra) = rf.latest_valid_checkpoint(
        ckpt.manager.all_steps(), lambda s: ckpt.restore(_state(0.0), rng, step=s),
        quarantine=quarantine)
    assert step == 2 and extra == {"iteration": 2}
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0, np.float32))
    np.testing.assert_array_equal(jax.random.key_data(key),
                                  jax.random.key_data(jax.random.fold_in(rng, 2)))
    assert ckpt.latest_step() == 2 and len(os.listdir(f"{ckpt_dir}.corrupt")) == 1
    ckpt.save(3, _state(30.0), rng)  # the quarantined step can be written again
    restored, _, _ = ckpt.restore(_state(0.0), rng)
    np.testing.assert_array_equal(restored["w"], np.full((4, 3), 30.0, np.float32))
    ckpt.close()


def test_latest_valid_checkpoint_all_corrupt_or_none():
    def restore(step):
        raise ValueError(f"bad step {step}\nlong TensorStore trace")

    with pytest.raises(rf.RunFolderError, match="step 5: ValueError: bad step 5; step 4"):
        rf.latest_valid_checkpoint([4, 5], restore)
    assert rf.latest_valid_checkpoint([], restore) == (None, None)
