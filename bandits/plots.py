"""PNG figures of a bandit study: medians over the verdict seeds with interquartile bands,
each method at its own best lr; the exact ceilings of the mode-covering objectives dashed."""

from __future__ import annotations

import matplotlib
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bandits import ceilings, env  # noqa: E402

COLORS = plt.get_cmap("tab20").colors


def _band(curves, rs, x_name, eval_every):
    ys = np.stack([curves["expected_reward"][r["curve_index"]] for r in rs])
    if x_name == "steps":
        x = eval_every * np.arange(1, ys.shape[1] + 1)
    else:
        x = curves["reward_queries"][rs[0]["curve_index"]]
    lo, med, hi = np.percentile(ys, [25, 50, 75], axis=0)
    return x, med, lo, hi


def _reward_axes(ax, x_name):
    """Shared styling: x = gradient steps (linear) or reward queries (log); y = reward."""
    ax.set_xlabel("gradient steps" if x_name == "steps" else "reward queries")
    if x_name != "steps":
        ax.set_xscale("log")
    ax.set_ylabel("expected reward (exact), median & IQR")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)


def save_figure(fig, path):
    """PNG through etils.epath (a local path or gs://…), then close the figure."""
    fig.tight_layout()
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def reward_curves(records, curves, best, config, path, *, x_name="steps"):
    rewards = tuple(config.methods)
    fig, axes = plt.subplots(1, len(rewards), figsize=(6.5 * len(rewards), 4.5), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        ceil = ceilings.ceilings(env.reference_policy(), env.reward_table(reward),
                                 config.samples_per_prompt, dict(config.hparams))
        for k, alg in enumerate(config.methods[reward]):
            rs = [r for r in records if r["study"] == "main" and r["role"] == "verdict"
                  and r["reward"] == reward and r["algorithm"] == alg
                  and r["learning_rate"] == best[(reward, alg)]]
            x, med, lo, hi = _band(curves, rs, x_name, config.eval_every)
            on, neg = rs[0]["on_policy"], rs[0]["negative_gradient"]
            color = COLORS[k % len(COLORS)]
            ax.plot(x, med, color=color, linestyle="-" if on else "--",
                    linewidth=2.0 if neg else 1.2, label=f"{alg} (lr {best[(reward, alg)]:g})")
            ax.fill_between(x, lo, hi, color=color, alpha=0.12)
            if alg in ceil:
                ax.axhline(ceil[alg][1], color=color, linestyle=":", linewidth=1.5)
        ax.set_title(f"{reward}: peak at {env.REWARDS[reward][0]} (dotted: exact ceilings)")
        _reward_axes(ax, x_name)
        ax.legend(fontsize=6.5, loc="lower right", ncol=2,
                  title="solid: on-policy; thick: negative gradient", title_fontsize=7)
    save_figure(fig, path)


def ablation(records, curves, study, knob, config, path):
    rs = [r for r in records if r["study"] == study]
    if not rs:
        return
    algs = sorted({r["algorithm"] for r in rs})
    fig, axes = plt.subplots(2, len(algs), figsize=(5.2 * len(algs), 7.5), squeeze=False)
    for j, alg in enumerate(algs):
        values = sorted({r[knob] for r in rs if r["algorithm"] == alg})
        for row, x_name in enumerate(("steps", "queries")):
            ax = axes[row][j]
            for k, v in enumerate(values):
                sel = [r for r in rs if r["algorithm"] == alg and r[knob] == v]
                x, med, lo, hi = _band(curves, sel, x_name, config.eval_every)
                name = f"B/M={v // config.minibatch_prompts}" if knob != "reuse" else f"T={v}"
                ax.plot(x, med, color=COLORS[2 * k], label=name)
                ax.fill_between(x, lo, hi, color=COLORS[2 * k], alpha=0.1)
            ax.set_title(f"{alg} on {sel[0]['reward']}, lr {sel[0]['learning_rate']:g}")
            _reward_axes(ax, x_name)
            ax.legend(fontsize=7)
    save_figure(fig, path)


def distributions(records, best, config, path, algorithms):
    ref = env.reference_policy()
    rewards = tuple(config.methods)
    fig, axes = plt.subplots(1, len(rewards), figsize=(6.5 * len(rewards), 4), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        table = env.reward_table(reward)
        ax.plot(ref, "k-", lw=2, label="π_ref")
        ax.plot(env.optimal_policy(ref, table, config.pi_star_beta), "k:", lw=2,
                label=f"π* (β={config.pi_star_beta})")
        ceil = ceilings.ceilings(ref, table, config.samples_per_prompt, dict(config.hparams))
        for k, alg in enumerate(algorithms):
            probs = [r["final_probs"] for r in records
                     if r["study"] == "main" and r["role"] == "verdict" and r["reward"] == reward
                     and r["algorithm"] == alg and r["learning_rate"] == best.get((reward, alg))]
            if probs:
                line, = ax.plot(np.mean(probs, 0), color=COLORS[2 * k], label=alg)
                if alg in ceil:
                    ax.plot(ceil[alg][0], color=line.get_color(), linestyle="--", lw=1,
                            label=f"{alg} exact optimum")
        ax2 = ax.twinx()
        ax2.fill_between(np.arange(len(table)), table, color="orange", alpha=0.15)
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("reward", color="orange")
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1.0)
        ax.set_xlabel("action")
        ax.set_title(f"{reward}: final distributions (mean over verdict seeds, best lr)")
        ax.legend(fontsize=6.5)
    save_figure(fig, path)
