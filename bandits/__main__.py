"""python -m bandits [--config=configs/bandits.py[:quick]] [--config.seeds=3] [--out DIR]

Runs the bandit study and writes DIR/{config.json, results.json, metrics.npz, *.png,
report.md}.
"""

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

import configs
from bandits import plots, report, study

_DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "bandits.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Study configuration.")
_OUT = flags.DEFINE_string("out", None, "Run folder (default: runs/bandits-<time>).")


def main(argv):
    del argv
    config = _CONFIG.value
    study.validate(config)
    out = _OUT.value or os.path.join("runs", time.strftime("bandits-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    t0 = time.perf_counter()
    records, curves, timings = study.run_study(config, show_progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    study.save(out, records, curves, timings)
    rewards = tuple(config.rewards)
    plots.reward_curves(records, curves, rewards, os.path.join(out, "reward_vs_steps.png"))
    plots.reward_curves(records, curves, rewards, os.path.join(out, "reward_vs_queries.png"),
                        x_name="queries")
    for rw in rewards:
        plots.two_by_two(records, rw, os.path.join(out, f"two_by_two_{rw}.png"))
    plots.distributions(records, rewards, config.pi_star_beta,
                        os.path.join(out, "distributions.png"),
                        ("onpolicy_ipo", "onpolicy_bofn", "offline_dpo", "pref_ft"))
    plots.ablation(records, curves, "reuse", "reuse", os.path.join(out, "ablation_reuse.png"))
    plots.ablation(records, curves, "batch", "prompts_per_batch",
                   os.path.join(out, "ablation_batch.png"))
    rows = report.write_report(os.path.join(out, "report.md"), records, curves, config,
                               timings, rewards)
    print(f"{len(records)} runs in {wall:.1f} s (compile included) -> {out}")
    for finding, verdict, evidence in rows:
        print(f"[{verdict}] {finding}\n    {evidence}")
    print(f"report: {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
    app.run(main)
