"""PNG plots of a synthetic study: gold metric vs gradient steps per algorithm, one panel per
task (like the paper's length-task figure), mean over seeds with a min–max band."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_LABELS = {"length": "response length (tokens)", "mode_distance": "|length − mode| (tokens)",
           "gold": "gold reward"}


def curves_vs_steps(config, records, curves, path, metric_for_task):
    """One panel per task; `metric_for_task(task) -> metric name`."""
    tasks = list(config.tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = metric_for_task(task)
        for algorithm in config.algorithms:
            c = curves.get(f"{task}/{algorithm}")
            if c is None:
                continue
            spi = next(r["steps_per_iteration"] for r in records if r["algorithm"] == algorithm)
            y = c[metric]
            x = np.arange(y.shape[1]) * spi
            line, = ax.plot(x, y.mean(0), label=algorithm)
            if y.shape[0] > 1:
                ax.fill_between(x, y.min(0), y.max(0), color=line.get_color(), alpha=0.15)
        ax.set_title(task)
        ax.set_xlabel("gradient steps")
        ax.set_ylabel(_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_plots(config, records, curves, out_dir):
    """Returns the file names written."""
    import os
    names = []
    if config.study == "length":
        metric = lambda t: "mode_distance" if t == "mode" else "length"
        curves_vs_steps(config, records, curves, os.path.join(out_dir, "gold_vs_steps.png"),
                        metric)
        names.append("gold_vs_steps.png")
        curves_vs_steps(config, records, curves, os.path.join(out_dir, "proxy_vs_steps.png"),
                        lambda t: "train_reward")
        names.append("proxy_vs_steps.png")
    else:
        curves_vs_steps(config, records, curves, os.path.join(out_dir, "reward_vs_steps.png"),
                        lambda t: "gold")
        names.append("reward_vs_steps.png")
    curves_vs_steps(config, records, curves, os.path.join(out_dir, "kl_vs_steps.png"),
                    lambda t: "kl_ref")
    names.append("kl_vs_steps.png")
    return names
