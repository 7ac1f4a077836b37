"""Sharded checkpoint loading on 8 simulated CPU devices (`llm.checkpoints.load_sharded`):
every leaf equals the whole (host) load exactly, in its sharding, for Llama-style (GQA) and
GPT-NeoX (fused q,k,v) layouts, float32 and bf16, a trunk of the first layer; sharded params
export and re-import exactly; a 2-layer Mistral-7B-width bf16 checkpoint loads with host
memory bounded by its largest tensor; and `--dry_run` of `mistral_ultrafeedback` on that
checkpoint prints a memory plan.

The checks run in subprocesses that set XLA_FLAGS before importing jax (the rest of the test
session keeps one CPU device).
"""

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
           JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
MESHES = [(1, 4, 2), (8, 1, 1)]


def _run(*args, timeout=300):
    proc = subprocess.run([sys.executable, *args], env=ENV, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _child_equal(tmp: pathlib.Path):
    import jax
    import numpy as np

    from llm import sharding as shd
    from llm import state as st
    from llm.checkpoints import load_hf, load_sharded, open_model, save_hf
    from modeseek import decoder as dec

    assert len(jax.devices()) == 8
    small = dict(vocab_size=64, embed_dim=32, head_dim=8, mlp_dim=64, tied_embeddings=False)
    configs = {"llama": dec.DecoderConfig.tiny(num_heads=4, num_kv_heads=2, **small),
               "gpt_neox": dec.DecoderConfig.pythia_160m(num_layers=2, num_heads=4,
                                                         num_kv_heads=4, max_len=64, **small)}
    for arch, config in configs.items():
        folder = tmp / arch
        save_hf(str(folder), config, dec.init_params(jax.random.key(0), config))
        _, whole, _ = load_hf(str(folder))
        whole = jax.device_get(whole)
        variants = {"float32": (config, whole),
                    "bfloat16": (config.replace(param_dtype="bfloat16"),
                                 jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), whole)),
                    "trunk": (config.replace(num_layers=1), dec.truncate_layers(whole, 1))}
        # every variant on a 1×4×2 mesh; the other meshes (and GPT-NeoX) float32 only (each
        # new mesh compiles the stacking functions again: ~0.7 s)
        for sizes in MESHES if arch == "llama" else MESHES[:1]:
            mesh = shd.make_mesh(*sizes)
            for name, (want_config, want) in variants.items():
                if name != "float32" and sizes != MESHES[0]:
                    continue
                shardings, _ = st.param_shardings(want_config, mesh)
                got = load_sharded(open_model(str(folder)), want_config, shardings)
                for g, w, s in zip(jax.tree.leaves(got), jax.tree.leaves(want),
                                   jax.tree.leaves(shardings), strict=True):
                    assert g.sharding == s, (arch, name, g.sharding, s)
                    assert g.dtype == w.dtype and g.shape == w.shape, (arch, name)
                    np.testing.assert_array_equal(np.asarray(g), w)
                specs = {str(x.sharding.spec) for x in jax.tree.leaves(got)}
                assert (sizes[1] == 1 or any("fsdp" in s for s in specs)), specs
                assert (sizes[2] == 1 or any("tensor" in s for s in specs)), specs
            print("ok", arch, sizes, flush=True)
        # export from sharded device params (one tensor gathered at a time), reimport exactly
        shardings, _ = st.param_shardings(config, shd.make_mesh(1, 4, 2))
        save_hf(str(tmp / f"{arch}-export"), config,
                load_sharded(open_model(str(folder)), config, shardings))
        jax.tree.map(np.testing.assert_array_equal,
                     jax.device_get(load_hf(str(tmp / f"{arch}-export"))[1]), whole)
        print("ok export", arch, flush=True)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _child_rss(tmp: pathlib.Path):
    """Write the synthetic checkpoint, reset the peak-RSS mark (/proc/self/clear_refs 5), load
    it onto 8 devices in bf16, report host RSS numbers (bytes) as JSON."""
    import gc

    import jax
    from llm_synthetic_ckpt import MISTRAL_7B_WIDTH, write_synthetic_hf

    from llm import sharding as shd
    from llm import state as st
    from llm.checkpoints import load_sharded, open_model

    _, shapes = write_synthetic_hf(tmp / "m7", dict(MISTRAL_7B_WIDTH, num_hidden_layers=2))
    gc.collect()
    model = open_model(str(tmp / "m7"))
    config = model.config.replace(param_dtype="bfloat16", dtype="bfloat16")
    shardings, _ = st.param_shardings(config, shd.make_mesh(1, 4, 2))
    before = _status_kib("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := current RSS
        f.write("5")
    params = load_sharded(model, config, shardings)
    jax.block_until_ready(params)
    peak = _status_kib("VmHWM") * 1024
    device = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards)
    print(json.dumps(dict(before=before, peak=peak, device=device,
                          largest=max(math.prod(s) for s in shapes.values()) * 2,
                          checkpoint=sum(math.prod(s) for s in shapes.values()) * 2,
                          dtypes=sorted({str(x.dtype) for x in jax.tree.leaves(params)}))))


def test_sharded_load_equals_whole_load_and_exports(tmp_path):
    out = _run(__file__, "equal", str(tmp_path))
    assert out.count("ok ") == len(MESHES) + 1 + 2, out


def test_7b_width_checkpoint_loads_with_bounded_host_memory_and_dry_runs(tmp_path):
    """Host memory of the load = peak RSS growth minus the bytes now held by the 8 CPU
    "devices" (on CPU they live in the same process); it must stay under the largest tensor
    (the 32000 × 4096 bf16 embedding, 262 MB) + 25%, against a 1.40 GB checkpoint (a float32
    host copy, as loading was before, is 2.8 GB)."""
    m = json.loads(_run(__file__, "rss", str(tmp_path)).strip().splitlines()[-1])
    assert m["dtypes"] == ["bfloat16"]
    assert m["device"] >= m["checkpoint"]   # every weight is on the devices
    host = m["peak"] - m["before"] - m["device"]
    assert host <= 1.25 * m["largest"], (host / 1e6, m)
    assert host < m["checkpoint"] / 4, (host / 1e6, m)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}) + "\n")
    out = _run("-m", "llm", "--config", "configs/llm.py:mistral_ultrafeedback", "--dry_run",
               f"--config.model={tmp_path / 'm7'}", f"--config.data.train={data}",
               f"--config.data.test={data}", f"--config.gold.ultrarm.path={tmp_path / 'm7'}")
    assert "dry run: 8 cpu devices, mesh {'data': 1, 'fsdp': 2, 'tensor': 4}" in out, out
    assert out.count("memory plan") >= 5 and "onpolicy_dpo" in out, out


def test_stage_env_reads_a_checkpoint_trunk_into_its_shardings(tmp_path):
    """A run's base model comes from the checkpoint tensor by tensor (`StageEnv.base_params`);
    a reward-model stage with trunk_layers=1 reads only layer 0."""
    import jax
    import numpy as np

    from configs.llm import get_config
    from llm import models
    from llm import sharding as shd
    from llm.checkpoints import load_hf, save_hf
    from modeseek import decoder as dec

    config = dec.DecoderConfig.tiny(tied_embeddings=False)
    save_hf(str(tmp_path / "hf"), config, dec.init_params(jax.random.key(3), config))
    cfg = get_config("tiny")
    cfg.model = str(tmp_path / "hf")
    cfg.stages.reward_model.trunk_layers = 1
    models.load_base.cache_clear()
    env = models.StageEnv.create(cfg, cfg.stages.reward_model, str(tmp_path / "run" / "rm"),
                                 shd.make_mesh(1, 1, 1))
    params, shardings = env.base_params()
    want = dec.truncate_layers(load_hf(str(tmp_path / "hf"))[1], 1)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(want))
    assert jax.tree.leaves(params)[0].sharding == jax.tree.leaves(shardings)[0]
    models.load_base.cache_clear()


if __name__ == "__main__":
    {"equal": _child_equal, "rss": _child_rss}[sys.argv[1]](pathlib.Path(sys.argv[2]))
