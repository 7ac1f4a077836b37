"""PNG figures of a bandit study, in the style of Tajwar et al.'s bandit figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bandits import env  # noqa: E402


def _style(algorithm_flags):
    on, neg = algorithm_flags
    return {"linestyle": "-" if on else "--", "linewidth": 2.0 if neg else 1.2}


def _mean_curves(records, curves, study, reward, x_name="steps"):
    """{algorithm: (x, mean, std, flags)} for one study/reward."""
    by_alg = {}
    for r in records:
        if r["study"] == study and r["reward"] == reward:
            by_alg.setdefault(r["algorithm"], []).append(r)
    out = {}
    for alg, rs in by_alg.items():
        group = curves[rs[0]["group"]]
        ys = np.stack([group["expected_reward"][r["curve_index"]] for r in rs])
        if x_name == "steps":
            x = np.arange(1, ys.shape[1] + 1)
        else:
            x = group["reward_queries"][rs[0]["curve_index"]]
        out[alg] = (x, ys.mean(0), ys.std(0), (rs[0]["on_policy"], rs[0]["negative_gradient"]))
    return out


def reward_curves(records, curves, rewards, path, *, x_name="steps"):
    fig, axes = plt.subplots(1, len(rewards), figsize=(6.5 * len(rewards), 4.5), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, reward in zip(axes[0], rewards):
        for k, (alg, (x, m, s, flags)) in enumerate(sorted(_mean_curves(
                records, curves, "main", reward, x_name).items())):
            line, = ax.plot(x, m, label=alg, color=colors[k % len(colors)], **_style(flags))
            ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.12)
        ax.set_title(f"{reward}: peak at {env.REWARDS[reward][0]}")
        ax.set_xlabel("gradient steps" if x_name == "steps" else "reward queries")
        if x_name != "steps":
            ax.set_xscale("log")
        ax.set_ylabel("expected reward (exact)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right", ncol=2,
                       title="solid: on-policy; thick: negative gradient", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def two_by_two(records, reward, path):
    """Final expected reward of the best algorithm in each on-policy × negative-gradient cell."""
    cells = np.full((2, 2), np.nan)
    names = [["", ""], ["", ""]]
    finals = {}
    for r in records:
        if r["study"] == "main" and r["reward"] == reward:
            finals.setdefault((r["algorithm"], r["on_policy"], r["negative_gradient"]),
                              []).append(r["final_expected_reward"])
    for (alg, on, neg), vals in finals.items():
        i, j = int(on), int(neg)
        if np.isnan(cells[i, j]) or np.mean(vals) > cells[i, j]:
            cells[i, j], names[i][j] = np.mean(vals), alg
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.imshow(cells, vmin=0, vmax=1, cmap="viridis")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{cells[i, j]:.2f}\n{names[i][j]}", ha="center", va="center",
                    color="white" if cells[i, j] < 0.6 else "black", fontsize=9)
    ax.set_xticks([0, 1], ["no negative gradient", "negative gradient"])
    ax.set_yticks([0, 1], ["offline", "on-policy"])
    ax.set_title(f"{reward}: final expected reward (best method per cell)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def distributions(records, rewards, pi_star_beta, path, algorithms):
    ref = env.reference_policy()
    fig, axes = plt.subplots(1, len(rewards), figsize=(6.5 * len(rewards), 4), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        table = env.reward_table(reward)
        ax.plot(ref, "k-", lw=2, label="π_ref")
        ax.plot(env.optimal_policy(ref, table, pi_star_beta), "k:", lw=2,
                label=f"π* (β={pi_star_beta})")
        for alg in algorithms:
            probs = [r["final_probs"] for r in records
                     if r["study"] == "main" and r["reward"] == reward and r["algorithm"] == alg]
            if probs:
                ax.plot(np.mean(probs, 0), label=alg)
        ax2 = ax.twinx()
        ax2.fill_between(np.arange(len(table)), table, color="orange", alpha=0.15)
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("reward", color="orange")
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1.0)
        ax.set_xlabel("action")
        ax.set_title(f"{reward}: learned distributions (mean over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ablation(records, curves, study, knob, path):
    rs = [r for r in records if r["study"] == study]
    if not rs:
        return
    algs = sorted({r["algorithm"] for r in rs})
    fig, axes = plt.subplots(1, len(algs), figsize=(5.5 * len(algs), 4), squeeze=False)
    for ax, alg in zip(axes[0], algs):
        values = sorted({r[knob] for r in rs if r["algorithm"] == alg})
        for v in values:
            sel = [r for r in rs if r["algorithm"] == alg and r[knob] == v]
            ys = np.stack([curves[r["group"]]["expected_reward"][r["curve_index"]] for r in sel])
            ax.plot(np.arange(1, ys.shape[1] + 1), ys.mean(0), label=f"{knob}={v}")
        ax.set_title(f"{alg} on {rs[0]['reward']}")
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("expected reward")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
