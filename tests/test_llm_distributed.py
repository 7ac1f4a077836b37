"""A 2-process `jax.distributed` run on 127.0.0.1 (one CPU device per process) computes the same
offline-DPO train step as one process: same loss, same gradient norm."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from llm_batches import random_pair_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600  # generous: two processes compile every stage on 2 cores (a hang still fails)


def _child(coordinator: str, num_processes: int, process_id: int):
    import jax

    from llm import distributed

    if num_processes > 1:
        assert distributed.initialize(coordinator, num_processes, process_id, timeout_s=60)
    import optax

    import modeseek
    from llm import sharding as shd
    from llm import state as st
    from llm import steps
    from modeseek import decoder as dec

    config = dec.DecoderConfig.tiny(vocab_size=264)
    mesh = shd.make_mesh(1, -1, 1)
    assert mesh.devices.size == num_processes
    batch = random_pair_batch()
    rows = len(batch["prompt_tokens"]) // num_processes
    local = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in batch.items()}
    # SGD, not Adam: Adam's first step is lr·g/|g|, so a near-zero gradient summed in another
    # order can move a parameter by up to lr, and the second step's loss would depend on it.
    optimizer = optax.sgd(1e-2)
    loss_fn = steps.make_offline_loss(config, "offline_dpo",
                                      steps.objective_hparams("offline_dpo", {}))
    shardings, _ = st.param_shardings(config, mesh)
    params = st.init_params_sharded(jax.random.key(0), config, shardings)
    state_sh = st.state_shardings(optimizer, shardings, params, mesh)
    state = st.init_state(params, optimizer, state_sh)
    step = st.jit_train_step(modeseek.make_train_step(loss_fn, optimizer), state_sh, mesh)
    for _ in range(2):
        state, metrics = step(state, shd.global_batch(local, mesh), jax.random.key(1))
    metrics = jax.device_get(metrics)
    print(json.dumps({"process": jax.process_index(), "loss": float(metrics["loss"]),
                      "grad_norm": float(metrics["grad_norm"])}), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(num_processes: int) -> list[dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS="")
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, __file__, coordinator, str(num_processes),
                               str(pid)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for pid in range(num_processes)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


def test_two_processes_give_the_single_process_loss():
    single = _run(1)[0]
    pair = _run(2)
    assert sorted(r["process"] for r in pair) == [0, 1]
    for r in pair:
        np.testing.assert_allclose(r["loss"], single["loss"], rtol=1e-5)
        np.testing.assert_allclose(r["grad_norm"], single["grad_norm"], rtol=1e-4)


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))


def test_two_process_stages_through_the_cli(tmp_path):
    """`python -m llm` in 2 processes (MODESEEK_* variables): offline DPO (reference cache,
    checkpoints, eval by sampling) and on-policy DPO finish; process 0 writes the metrics."""
    port = _free_port()
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "llm", "--config", "configs/llm.py:tiny", "--workdir",
           str(workdir), "--stages", "offline_dpo,onpolicy_dpo",
           "--config.stages.offline_dpo.num_steps=2", "--config.stages.offline_dpo.reward_model=",
           "--config.stages.onpolicy_dpo.num_iterations=1",
           "--config.stages.onpolicy_dpo.reward_model=",
           "--config.stages.onpolicy_dpo.max_new_tokens=6", "--config.eval.every=1",
           "--config.eval.max_new_tokens=6", "--config.eval.num_prompts=4"]
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS="",
                   MODESEEK_COORDINATOR=f"127.0.0.1:{port}", MODESEEK_NUM_PROCESSES="2",
                   MODESEEK_PROCESS_ID=str(pid))
        # files, not pipes: a full pipe would block one process inside a collective
        log = open(tmp_path / f"process{pid}.log", "w")
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        for pid, proc in enumerate(procs):
            proc.wait(timeout=TIMEOUT_S)
            assert proc.returncode == 0, (tmp_path / f"process{pid}.log").read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    offline = [json.loads(x) for x in open(workdir / "offline_dpo" / "metrics.jsonl")]
    assert [r["step"] for r in offline] == [0, 1, 2] and "eval/length" in offline[-1]
    onpolicy = [json.loads(x) for x in open(workdir / "onpolicy_dpo" / "metrics.jsonl")]
    assert onpolicy[-1]["step"] == 1 and onpolicy[-1]["rollout/tokens"] > 0
