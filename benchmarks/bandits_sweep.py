"""Benchmark: the default bandit study (configs/bandits.py) on this machine.

    python benchmarks/bandits_sweep.py [--config=configs/bandits.py:quick] [--torch_steps=100]

Prints, per compiled program, compile and run time, and gradient steps per second summed over
runs; then the same on-policy IPO step in plain PyTorch (vectorised and the authors'
per-pair-loop style), one run at a time, and the ratios.
"""

import os
import time

import jax
from absl import app, flags
from ml_collections import config_flags

import configs
from bandits import study

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(configs.__file__), "bandits.py"), "Study config.")
_TORCH_STEPS = flags.DEFINE_integer("torch_steps", 100, "PyTorch steps to time (0: skip).")


def main(argv):
    del argv
    config = _CONFIG.value
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    records, _, timings = study.run_study(config, show_progress=False)
    wall = time.perf_counter() - t0
    total_steps = 0
    print("| program | runs | steps/run | compile (s) | run (s) | steps/s (all runs) |")
    print("|---|---|---|---|---|---|")
    for group, t in timings.items():
        steps = t["runs"] * t["steps"]
        total_steps += steps
        print(f"| {group} | {t['runs']} | {t['steps']} | {t['compile_s']:.1f} | "
              f"{t['run_s']:.1f} | {steps / t['run_s']:,.0f} |")
    run_s = sum(t["run_s"] for t in timings.values())
    compile_s = sum(t["compile_s"] for t in timings.values())
    ours = total_steps / run_s
    print(f"whole study: {len(records)} runs, {total_steps:,} gradient steps, wall {wall:.1f} s "
          f"(compile {compile_s:.1f} s, run {run_s:.1f} s); {ours:,.0f} steps/s")
    if _TORCH_STEPS.value:
        from torch_bandit import run as torch_run

        vec = torch_run(_TORCH_STEPS.value, "vectorised")
        loops = torch_run(max(_TORCH_STEPS.value // 10, 5), "per_pair_loops")
        print(f"PyTorch on-policy IPO, one run: vectorised {1 / vec:,.0f} steps/s, "
              f"per-pair loops {1 / loops:,.1f} steps/s")
        print(f"ratio (modeseek study throughput / PyTorch): {ours * vec:,.0f}x vectorised, "
              f"{ours * loops:,.0f}x per-pair loops")
        print(f"whole study in PyTorch, one run at a time (vectorised): "
              f"{total_steps * vec / 60:,.1f} min vs {wall:.1f} s here")


if __name__ == "__main__":
    app.run(main)
