"""Object-store run folders and checkpoints: every run-folder file (config.json, metrics.jsonl,
summary.json, the done marker, the reference cache, report.md and its plots), checkpoint
reads and writes (safetensors) and data reads go through etils.epath, so a `gs://` workdir
works. Tested on an in-memory `gs://` filesystem (fsspec's MemoryFileSystem behind epath's
fsspec backend: no network), with `open` and `os` file calls made to raise for any `gs:` path,
so a path that slips past epath to the local filesystem fails the test instead of creating a
local folder named `gs:`.

Not covered here: orbax parameter checkpoints (tensorstore writes gs:// itself and needs a
real bucket) and TensorBoard events (kept off for object-store run folders).
"""

import builtins
import functools
import json
import os

import jax
import numpy as np
import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from configs.llm import get_config
from llm import config_checks, logs, report, run_folder, train
from llm.checkpoints import load_hf, open_model, save_hf
from modeseek import _checks
from modeseek import decoder as dec

ROOT = "gs://bucket/run"


class FakeGCS(MemoryFileSystem):
    """An in-memory filesystem answering to gs:// paths."""
    protocol = ("gs", "gcs")

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            path = path[len(prefix):] if path.startswith(prefix) else path
        path = path.strip("/")
        return "/" + path if path else ""


def _refuse_gs(fn, arg_index=0):
    def guarded(*args, **kwargs):
        path = args[arg_index] if len(args) > arg_index else None
        if isinstance(path, str | bytes | os.PathLike) and "gs:" in os.fsdecode(path):
            raise AssertionError(f"{fn.__name__}({path!r}) reached the local filesystem")
        return fn(*args, **kwargs)
    return guarded


@pytest.fixture
def gcs(monkeypatch):
    fs = FakeGCS(skip_instance_cache=True)
    fs.store, fs.pseudo_dirs = {}, [""]
    monkeypatch.setattr(epath.backend._FileSystemSpecBackend, "fs", lambda self, path: fs)
    for module, name in ((builtins, "open"), (os, "open"), (os, "stat"), (os, "makedirs"),
                         (os, "mkdir"), (os, "replace"), (os, "rename"), (os, "listdir"),
                         (os, "remove"), (os, "scandir")):
        monkeypatch.setattr(module, name, _refuse_gs(getattr(module, name)))
    return fs


def test_the_guard_catches_local_access_to_a_gs_path(gcs):
    with pytest.raises(AssertionError, match="reached the local filesystem"):
        open(f"{ROOT}/config.json", "w")
    with pytest.raises(AssertionError, match="reached the local filesystem"):
        os.makedirs(ROOT, exist_ok=True)
    with pytest.raises(AssertionError, match="reached the local filesystem"):
        os.path.exists(f"{ROOT}/x")  # os.path.* go through os.stat


def test_run_folder_files_on_gs(gcs):
    cfg = get_config("tiny")
    assert run_folder.claim_workdir(ROOT, cfg.to_dict(), resume=False) is None
    assert gcs.exists("/bucket/run/config.json")
    with pytest.raises(run_folder.RunFolderError, match="already holds a run"):
        run_folder.claim_workdir(ROOT, cfg.to_dict(), resume=False)
    assert run_folder.claim_workdir(ROOT, cfg.to_dict(), resume=True)["model"] == "tiny"
    with pytest.raises(FileExistsError, match="already holds a run"):
        _checks.check_new_run_folder(ROOT, "--workdir")  # the bandits / synthetic guard too
    stage = f"{ROOT}/offline_dpo"
    assert run_folder.claim_stage_dir(stage, resume=False) == "fresh"
    assert run_folder.parent_dir(stage) == ROOT
    logger = logs.MetricsLogger(stage)
    for step in (1, 2, 3):
        logger.log(step, {"loss": 1.0 / step, "eval/length": 10.0 - step})
    logger.close()
    assert [r["step"] for r in logs.read_metrics(stage)] == [1, 2, 3]
    logs.MetricsLogger(stage, resume_step=2).close()  # resuming drops steps after the restore
    assert [r["step"] for r in logs.read_metrics(stage)] == [1, 2]
    cached = run_folder.load_or_compute_cached(f"{ROOT}/cache/offline_dpo.ref_logps.npz", "k1",
                                               lambda: np.arange(4.0))
    again = run_folder.load_or_compute_cached(f"{ROOT}/cache/offline_dpo.ref_logps.npz", "k1",
                                              lambda: pytest.fail("recomputed a valid cache"))
    np.testing.assert_array_equal(cached, again)
    run_folder.mark_stage_done(stage, {"status": "done", "stage": "offline_dpo"})
    assert run_folder.claim_stage_dir(stage, resume=False) == "skip"
    # a finished stage is skipped and its summary.json read back (llm.train)
    summary = train.run_stage(cfg, cfg.stages.offline_dpo, stage)
    assert summary == {"status": "done", "stage": "offline_dpo", "skipped": True}
    path = report.write_report(ROOT, cfg)
    assert path == f"{ROOT}/report.md" and "offline_dpo" in epath.Path(path).read_text()


def test_checkpoint_and_data_on_gs_and_paths_checked(gcs):
    config = dec.DecoderConfig.tiny(tied_embeddings=False)
    shapes = jax.eval_shape(functools.partial(dec.init_params, config=config), jax.random.key(0))
    rng = np.random.default_rng(0)  # random host weights: no compile needed
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    save_hf(f"{ROOT}/model", config, params)
    assert gcs.exists("/bucket/run/model/model.safetensors")
    loaded_config, loaded, _ = load_hf(f"{ROOT}/model")  # tensor by tensor, as load_sharded
    assert loaded_config == config and open_model(f"{ROOT}/model").config == config
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), params)
    cfg = get_config("tiny")
    row = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}
    epath.Path(f"{ROOT}/data/train.jsonl").write_text(json.dumps(row) + "\n")
    cfg.model, cfg.data.train = f"{ROOT}/model", f"{ROOT}/data/train.jsonl"
    cfg.data.test = cfg.data.train
    config_checks.check_paths(cfg)  # exists, parses
    cfg.data.test = f"{ROOT}/data/missing.jsonl"
    with pytest.raises(config_checks.ConfigError, match=r"config\.data\.test=.*missing\.jsonl.*"
                       r"no such data file"):
        config_checks.check_paths(cfg)


def test_check_paths_names_the_missing_or_bad_field(tmp_path):
    cfg = get_config("mistral_ultrafeedback")  # placeholder /data/... paths
    with pytest.raises(config_checks.ConfigError,
                       match=r"config\.model='/data/mistral-7b': no such Hugging Face folder"):
        config_checks.check_paths(cfg)
    model = tmp_path / "model"
    model.mkdir()
    cfg.model = str(model)
    with pytest.raises(config_checks.ConfigError, match="has no config.json"):
        config_checks.check_paths(cfg)
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(config_checks.ConfigError, match="no model.safetensors"):
        config_checks.check_paths(cfg)
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(config_checks.ConfigError, match=r"config\.data\.train='/data/ultra"):
        config_checks.check_paths(cfg)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello."}) + "\n")
    cfg.data.train = cfg.data.test = str(data)
    with pytest.raises(config_checks.ConfigError,
                       match=r"config\.data\.train: .*train\.jsonl:1: field 'rejected'"):
        config_checks.check_paths(cfg)
    data.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}) + "\n")
    with pytest.raises(config_checks.ConfigError,
                       match=r"config\.gold\.ultrarm\.path='/data/UltraRM-13b': no such"):
        config_checks.check_paths(cfg)
    cfg.gold.ultrarm.path = str(model)
    config_checks.check_paths(cfg)
