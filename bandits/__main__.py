"""python -m bandits [--config=configs/bandits.py[:quick|:geometry]] [--config.verdict_seeds=10]
                    [--out DIR]

Runs the bandit study and writes DIR/{config.json, results.json, metrics.npz, *.png,
report.md}. On a CPU the run table is split over the host's cores as separate XLA devices
(set before JAX starts, unless XLA_FLAGS already says otherwise), and compiled programs are
cached under runs/.jax_cache (or $BANDITS_JAX_CACHE), so a second run starts at once.
"""

import os
import sys
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={min(os.cpu_count() or 1, 8)}").strip()

from absl import app, flags  # noqa: E402
from etils import epath  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import configs  # noqa: E402
from bandits import geometry, geometry_report, plots, report, study  # noqa: E402
from modeseek._checks import check_new_run_folder  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "bandits.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Study configuration.")
_OUT = flags.DEFINE_string("out", None, "Run folder (default: runs/bandits-<time>).")


def main(argv):
    del argv
    t0, cpu0, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    config = _CONFIG.value
    is_map = "geometry" in config  # configs/bandits.py:geometry, the geometry map
    (geometry.validate if is_map else study.validate)(config)
    study.enable_compilation_cache(os.environ.get("BANDITS_JAX_CACHE", "runs/.jax_cache"))
    out = epath.Path(_OUT.value or f"runs/{time.strftime('bandits-%Y%m%d-%H%M%S')}")
    try:
        check_new_run_folder(out)
    except FileExistsError as e:
        sys.exit(f"error: {e}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json_best_effort(indent=2))
    if is_map:
        return geometry_report.main(config, out, t0, cpu0, load)
    records, curves, best, timings = study.run_study(config)
    study.save(out, records, curves, best, timings)
    plots.reward_curves(records, curves, best, config, out / "reward_vs_steps.png")
    plots.reward_curves(records, curves, best, config, out / "reward_vs_queries.png",
                        x_name="queries")
    plots.distributions(records, best, config, out / "distributions.png",
                        ("onpolicy_ipo", "onpolicy_bofn", "offline_bofn", "pref_ft",
                         "offline_rwr"))
    plots.ablation(records, curves, "reuse", "reuse", config, out / "ablation_reuse.png")
    plots.ablation(records, curves, "batch", "prompts_per_batch", config,
                   out / "ablation_batch.png")
    timings.update(command_s=time.perf_counter() - t0, cpu_s=time.process_time() - cpu0,
                   load=f"{load:.2f}")
    rows = report.write_report(out / "report.md", records, curves, best, config, timings)
    print(f"{timings['runs']} runs in {timings['command_s']:.1f} s wall ({timings['cpu_s']:.1f} "
          f"CPU-s, startup {timings['startup_s']:.1f} s (compile + SFT), load {load:.2f}) -> {out}")
    for finding, verdict, _, _ in rows:
        print(f"[{verdict}] {finding}")
    print(f"report: {out / 'report.md'}", file=sys.stdout)

if __name__ == "__main__":
    app.run(main)
