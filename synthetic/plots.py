"""PNG plots of a synthetic study: each metric vs gradient steps per algorithm, one row of panels
per task and one column per learning rate (median over seeds, IQR band), and the proxy RMs'
mean score vs response length on π_ref samples."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from synthetic.measures import curve_key  # noqa: E402

_LABELS = {"length": "response length (tokens)", "mode_distance": "|length − mode| (tokens)",
           "gold": "gold reward", "train_reward": "proxy reward", "kl_ref": "KL(π‖π_ref)"}


def curves_vs_steps(config, records, curves, path, metric_for_task, rates):
    """Rows = tasks, columns = learning rates; `metric_for_task(task) -> metric name`."""
    tasks = list(config.tasks)
    fig, axes = plt.subplots(len(tasks), len(rates), figsize=(4.2 * len(rates),
                                                             3.2 * len(tasks)),
                             squeeze=False, sharey="row")
    spi = {r["algorithm"]: r["steps_per_iteration"] for r in records}
    for row, task in zip(axes, tasks):
        metric = metric_for_task(task)
        for ax, lr in zip(row, rates):
            for algorithm in config.algorithms:
                c = curves.get(curve_key(task, algorithm, lr))
                if c is None:
                    continue
                y = c[metric]
                x = np.arange(y.shape[1]) * spi[algorithm]
                line, = ax.plot(x, np.median(y, 0), label=algorithm, lw=1.2)
                if y.shape[0] > 1:
                    lo, hi = np.percentile(y, [25, 75], 0)
                    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
            ax.set_title(f"{task}, lr {lr:g}", fontsize=9)
            ax.set_xlabel("gradient steps")
            ax.set_ylabel(_LABELS.get(metric, metric))
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def rm_score_vs_length(info, path, min_count: int = 5):
    """Mean proxy-RM score per response length on gold-labelled π_ref samples, one line per task
    (lengths with ≥ min_count samples), with π_ref's length histogram underneath."""
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6, 5), sharex=True,
                                 gridspec_kw=dict(height_ratios=(3, 1)))
    for task, m in info["tasks"].items():
        mean = np.array([np.nan if v is None else v for v in m["rm_score_by_length"]])
        count = np.asarray(m["rm_count_by_length"])
        keep = count >= min_count
        x = np.arange(len(mean))
        ax.plot(x[keep], mean[keep], marker=".", label=f"{task} RM")
        if task == "skew" and m.get("skew_cap") is not None:
            ax.axvline(m["skew_cap"], ls="--", color="gray", lw=0.8, label="skew cap")
    hx.bar(x, count, color="gray")
    ax.set_ylabel("mean proxy score")
    ax.set_title("proxy RM score vs length on π_ref samples", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    hx.set_xlabel("response length (tokens)")
    hx.set_ylabel("π_ref samples")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def write_plots(config, records, curves, info, out_dir):
    """Returns the file names written."""
    rates = [float(r) for r in info["learning_rates"]]
    names = []

    def add(name, metric):
        curves_vs_steps(config, records, curves, os.path.join(out_dir, name), metric, rates)
        names.append(name)

    if config.study == "length":
        add("gold_vs_steps.png", lambda t: "mode_distance" if t == "mode" else "length")
        add("proxy_vs_steps.png", lambda t: "train_reward")
        rm_score_vs_length(info, os.path.join(out_dir, "rm_score_vs_length.png"))
        names.append("rm_score_vs_length.png")
    else:
        add("reward_vs_steps.png", lambda t: "gold")
    add("kl_vs_steps.png", lambda t: "kl_ref")
    return names
