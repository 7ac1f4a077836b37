"""Benchmark: the default bandit study (configs/bandits.py) on this machine, against a PyTorch
port, in one run.

    python benchmarks/bandits_sweep.py [--config=configs/bandits.py:quick] [--torch_steps=300]

Prints the load average, compile / SFT / run time, gradient steps per second summed over runs,
then the same bandit run (on-policy IPO, MLP, M = 10 prompts × N = 10 samples, all pairs, the
same evaluation schedule as the study) in plain PyTorch — vectorised and in the authors'
per-pair-loop style — one run at a time (what a user would otherwise run), and the ratios.
The persistent compilation cache is off here, so compile time is a cold compile.
"""

import os
import sys
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={min(os.cpu_count() or 1, 8)}").strip()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import configs  # noqa: E402
from bandits import study  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(configs.__file__), "bandits.py"), "Study config.")
_TORCH_STEPS = flags.DEFINE_integer("torch_steps", 300, "PyTorch steps to time (0: skip).")


def main(argv):
    del argv
    config = _CONFIG.value
    load = os.getloadavg()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {len(jax.devices())} devices, "
          f"{os.cpu_count()} CPUs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    t0, cpu0 = time.perf_counter(), time.process_time()
    records, _, _, t = study.run_study(config)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ours = t["run_steps"] / t["run_s"]
    print(f"study: {len(records)} runs, {t['run_steps']:,} run-steps, {t['programs']} programs "
          f"on {t['devices']} device(s); wall {wall:.1f} s ({cpu:.1f} CPU-s): compile "
          f"{t['compile_s']:.1f} s, SFT {t['sft_s']:.1f} s, runs {t['run_s']:.1f} s -> "
          f"{ours:,.0f} steps/s summed over runs ({1e3 / ours:.3f} ms per run-step)")
    if _TORCH_STEPS.value:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from torch_bandit import run as torch_run

        kw = dict(eval_every=config.eval_every, eval_prompts=config.eval_prompts)
        vec = torch_run(_TORCH_STEPS.value, "vectorised", **kw)
        loops = torch_run(max(_TORCH_STEPS.value // 20, 5), "per_pair_loops", **kw)
        print(f"PyTorch on-policy IPO, one run: vectorised {1 / vec:,.0f} steps/s, "
              f"per-pair loops {1 / loops:,.1f} steps/s")
        print(f"ratio (study steps/s / PyTorch): {ours * vec:,.1f}x vectorised, "
              f"{ours * loops:,.0f}x per-pair loops; counting compile and SFT: "
              f"{t['run_steps'] / wall * vec:,.1f}x vectorised")
        print(f"the whole study in PyTorch, one run at a time (vectorised): "
              f"{t['run_steps'] * vec / 60:,.1f} min vs {wall:.1f} s here")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    app.run(main)
