"""Figures and report.md of the geometry map (bandits/geometry.py), and its command."""

from __future__ import annotations

import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

import modeseek  # noqa: E402
from bandits import env, geometry, plots  # noqa: E402
from bandits.measures import fmt  # noqa: E402

CLASS_SHORT = {"offline_adequate": "offline ok", "onpolicy_negative": "on-policy + neg",
               "onpolicy_no_negative": "on-policy, no neg"}


def _cell_name(cell):
    return f"{'on' if cell[0] else 'off'}/{'neg' if cell[1] else 'no-neg'}"


def plot_map(rows, config, path):
    """Median final reward of each method vs the peak's action, one panel per width; π_ref on
    a log axis; grey background where diagnose recommends on-policy + negative gradient."""
    widths = list(config.geometry.widths)
    fig, axes = plt.subplots(len(widths), 1, figsize=(10, 3.6 * len(widths)), squeeze=False)
    ref = env.reference_policy()
    for ax, width in zip(axes[:, 0], widths):
        rs = [r for r in rows if r["width"] == width]
        peaks = np.array([r["peak"] for r in rs])
        step = np.min(np.diff(peaks)) if len(peaks) > 1 else 1
        for r in rs:
            if r["predicted"] == "onpolicy_negative":
                ax.axvspan(r["peak"] - step / 2, r["peak"] + step / 2, color="0.9", lw=0)
        for a in config.geometry.methods:
            on, neg = geometry._cell(a)
            ax.plot(peaks, [r["final"][a] for r in rs], marker="o", ms=3,
                    ls="-" if on else "--", lw=2 if neg else 1, label=a)
        for r in rs:
            if not r["correct"]:
                ax.plot(r["peak"], 1.04, marker="x", color="red", ms=7)
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("reward peak (action)")
        ax.set_ylabel("median final reward")
        ax.set_title(f"width {width:g}: grey = diagnose recommends on-policy + negative "
                     "gradient; red × = recommendation ≠ measured class", fontsize=9)
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.semilogy(np.arange(len(ref)), ref, color="k", alpha=0.35, lw=1)
        twin.set_ylabel("π_ref(a) (black)")
    axes[0, 0].legend(fontsize=7, ncol=4, loc="lower left")
    plots.save_figure(fig, path)


def plot_gains(rows, path):
    """On-policy gain and negative-gradient gains vs π_ref(peak), ESS/n and KL(π*‖π_ref)."""
    xs = (("ref_peak", "π_ref(peak)", True), ("ess_ratio", "ESS/n (exact)", True),
          ("kl_opt_ref", "KL(π*‖π_ref) (exact, nats)", False))
    ys = (("onpolicy_gain", "on-policy gain (final reward)"),
          ("neg_gain_onpolicy", "neg.-gradient gain, on-policy (final reward)"),
          ("neg_gain_steps_onpolicy", "neg.-gradient gain, on-policy (steps to 0.9)"),
          ("neg_gain_offline", "neg.-gradient gain, offline (final reward)"))
    fig, axes = plt.subplots(len(ys), len(xs), figsize=(12, 2.8 * len(ys)), squeeze=False)
    widths = sorted({r["width"] for r in rows})
    for i, (yk, yl) in enumerate(ys):
        for j, (xk, xl, log) in enumerate(xs):
            ax = axes[i, j]
            for w in widths:
                rs = [r for r in rows if r["width"] == w]
                ax.scatter([r["diagnose"][xk] for r in rs], [r[yk] for r in rs], s=14,
                           label=f"width {w:g}")
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            if xk == "ess_ratio":
                ax.axvline(modeseek.diagnose.ALIGNED_ESS, color="k", ls=":", lw=1)
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl, fontsize=8)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    plots.save_figure(fig, path)


def _spearman(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return float(modeseek.spearman(x[ok], y[ok])) if ok.sum() > 2 else float("nan")


def _table(rows, methods):
    head = ("| peak | width | π_ref(peak) | ESS/n | KL(π*‖π_ref) | Spearman | top-10% quantile "
            "| recommended | measured | winner (cell) | best final | on-policy gain "
            "| neg. gain on (final / steps) | neg. gain off | regret | "
            + " | ".join(methods) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        d = r["diagnose"]
        lines.append(
            f"| {r['peak']} | {r['width']:g} | {d['ref_peak']:.4f} | {d['ess_ratio']:.3f} | "
            f"{d['kl_opt_ref']:.2f} | {d['spearman']:+.2f} | {d['top_quantile']:.2f} | "
            f"{CLASS_SHORT[r['predicted']]} | {CLASS_SHORT[r['measured']]}"
            f"{'' if r['correct'] else ' ✗'} | {r['winner']} ({_cell_name(r['winner_cell'])}) | "
            f"{r['best_final']:.3f} | {r['onpolicy_gain']:+.3f} | "
            f"{r['neg_gain_onpolicy']:+.3f} / {fmt(r['neg_gain_steps_onpolicy'], 0)} | "
            f"{r['neg_gain_offline']:+.3f} | {r['regret']:.3f} | "
            + " | ".join(f"{r['final'][a]:.2f} ({fmt(r['steps'][a], 0)})" for a in methods)
            + " |")
    return lines


def write_report(path, rows, config, timings):
    """report.md: the accuracy of the recommendation, where the paper's rule holds and fails,
    and one row per geometry."""
    acc = geometry.accuracy(rows)
    g = config.geometry
    lrs = ", ".join(f"{a} {g.learning_rates[a]:g}" for a in g.methods)
    ref_peak = [r["diagnose"]["ref_peak"] for r in rows]
    wrong = [r for r in rows if not r["correct"]]
    aligned = [r for r in rows if r["predicted"] == "offline_adequate"]
    mis = [r for r in rows if r["predicted"] == "onpolicy_negative"]
    neg_wins = sum(r["winner_cell"][1] for r in rows)
    lines = [
        "# Geometry map: where the reward's peak sits, which method wins, and whether "
        "`modeseek.recommend` predicts it",
        "",
        f"Command: `python -m bandits --config=configs/bandits.py:geometry`. Rewards r(a) = "
        f"exp(−((a − peak)/width)²), peaks {list(g.peaks)}, widths {list(g.widths)} "
        f"({len(rows)} geometries); methods {', '.join(g.methods)}; learning rates {lrs}; "
        f"seeds 0–{g.seeds - 1}; {config.num_steps} gradient steps, policy {config.policy}, "
        f"minibatches of {config.minibatch_prompts} prompts × {config.samples_per_prompt} "
        f"samples (on-policy B = {config.onpolicy_prompts}, offline dataset "
        f"{config.offline_prompts} prompts from π_ref). Diagnostic: exact "
        f"`modeseek.diagnose_categorical` at β = {config.pi_star_beta:g} (the study's π* β), "
        f"recommendation thresholds ESS/n ≥ {modeseek.diagnose.ALIGNED_ESS:g} = aligned "
        "(fixed in modeseek/diagnose.py before this map was run). Numbers are medians over "
        f"seeds. Margin for 'about the same': {geometry.MARGIN:g} final reward.",
        "",
        f"Runtime: {timings['runs']} runs in {timings['command_s']:.0f} s wall "
        f"({timings['cpu_s']:.0f} CPU-s of this process; compile {timings['compile_s']:.0f} s, "
        f"SFT {timings['sft_s']:.0f} s, runs {timings['run_s']:.0f} s) on {timings['devices']} "
        f"host devices at load average {timings['load']} (a shared machine: not a benchmark).",
        "",
        "## Does the recommendation predict the measured class?",
        "",
        f"- accuracy: **{acc['correct']} of {acc['n']} geometries ({acc['accuracy']:.0%})** "
        "(recommended class = measured class; measured: offline adequate when the best offline "
        "method is within the margin of the best final reward, else on-policy + negative "
        "gradient when that cell is, else on-policy without)",
        "- confusion (recommended → measured): " + "; ".join(
            f"{CLASS_SHORT[p]} → {CLASS_SHORT[m]}: {n}" for (p, m), n in
            sorted(acc["confusion"].items())),
        f"- reward left on the table by following it (best final − best in the recommended "
        f"class): median {acc['regret_median']:.3f}, max {acc['regret_max']:.3f}; more than "
        f"the margin in {acc['regret_over_margin']} of {acc['n']}",
        f"- missed savings (on-policy recommended where offline was adequate): "
        f"{acc['missed_savings']} of {acc['n']}",
        f"- the single winner (fewest steps to 0.9 within the margin of the best final reward) "
        f"lies in the recommended class in {acc['winner_in_class']} of {acc['n']}; steps to "
        f"0.9 lost by the best of the recommended class against the winner: median "
        f"{fmt(np.median([r['steps_regret'] for r in rows]), 0)}, max "
        f"{fmt(max(r['steps_regret'] for r in rows), 0)}",
        "",
        "## Where the paper's rule holds and where it fails",
        "",
        f"- On-policy gain vs π_ref(peak): Spearman "
        f"{_spearman(ref_peak, [r['onpolicy_gain'] for r in rows]):+.2f} over all geometries "
        "(the paper: the gain is largest where π_ref is small, i.e. negative). Median "
        f"on-policy gain where diagnose says aligned: "
        f"{fmt(np.median([r['onpolicy_gain'] for r in aligned]) if aligned else np.nan)}; "
        f"misaligned: {fmt(np.median([r['onpolicy_gain'] for r in mis]) if mis else np.nan)}.",
        f"- Negative gradient, on-policy (final reward): gain > margin in "
        f"{sum(r['neg_gain_onpolicy'] > geometry.MARGIN for r in rows)} of {len(rows)}, "
        f"< −margin in {sum(r['neg_gain_onpolicy'] < -geometry.MARGIN for r in rows)}; in steps "
        f"to 0.9 the negative-gradient cell was faster by > 5 steps in "
        f"{sum(r['neg_gain_steps_onpolicy'] > 5 for r in rows)} and slower by > 5 in "
        f"{sum(r['neg_gain_steps_onpolicy'] < -5 for r in rows)}. Offline (final reward): "
        f"gain > margin in {sum(r['neg_gain_offline'] > geometry.MARGIN for r in rows)} of "
        f"{len(rows)}.",
        f"- The winner (fewest steps to 0.9 among methods within the margin of the best final "
        f"reward) has a negative gradient in {neg_wins} of {len(rows)} geometries and is "
        f"on-policy in {sum(r['winner_cell'][0] for r in rows)}.",
        f"- Offline adequate in {sum(r['measured'] == 'offline_adequate' for r in rows)} of "
        f"{len(rows)}; an offline method *without* a negative gradient (supervised: Best-of-N, "
        f"Pref-FT) within the margin in "
        f"{sum(r['offline_no_negative_adequate'] for r in rows)} of {len(rows)}.",
        "- Mismatches: " + ("none" if not wrong else "; ".join(
            f"peak {r['peak']} width {r['width']:g} (ESS/n {r['diagnose']['ess_ratio']:.3f}, "
            f"π_ref(peak) {r['diagnose']['ref_peak']:.4f}): recommended "
            f"{CLASS_SHORT[r['predicted']]}, measured {CLASS_SHORT[r['measured']]}, regret "
            f"{r['regret']:.3f}" for r in wrong)),
        "",
        "![final reward per geometry](map.png)",
        "",
        "![gains vs the diagnostic](gains.png)",
        "",
        "## Every geometry",
        "",
        "Per method: median final reward (median steps to 0.9; never = did not reach it).",
        "",
        *_table(rows, list(g.methods)),
        "",
    ]
    epath.Path(path).write_text("\n".join(lines))
    return acc


def main(config, out, t0, cpu0, load):
    """Run the map into the run folder `out` and `render` it; print the accuracy."""
    records, _, timings = geometry.run(config)
    timings.update(command_s=time.perf_counter() - t0, cpu_s=time.process_time() - cpu0,
                   load=f"{load:.2f}")
    acc = render(config, out, records, timings)
    print(f"{timings['runs']} runs in {timings['command_s']:.1f} s wall ({timings['cpu_s']:.1f} "
          f"CPU-s, load {load:.2f}); recommendation accuracy {acc['correct']}/{acc['n']}, "
          f"median regret {acc['regret_median']:.3f} -> {epath.Path(out) / 'report.md'}")


def render(config, out, records, timings):
    """Write results.json (every run's measures, each geometry's row), map.png, gains.png and
    report.md into `out`; return the accuracy summary."""
    rows = geometry.table(records, config)
    out = epath.Path(out)
    plot_map(rows, config, out / "map.png")
    plot_gains(rows, out / "gains.png")
    acc = write_report(out / "report.md", rows, config, timings)
    drop = ("recommendation", "winner_cell")
    with (out / "results.json").open("w") as f:
        json.dump({"timings": timings, "accuracy": {k: v for k, v in acc.items()
                                                   if k != "confusion"},
                   "geometries": [{k: v for k, v in r.items() if k not in drop}
                                  | {"advice": r["recommendation"].advice} for r in rows],
                   "runs": [{k: v for k, v in r.items() if k != "final_probs"}
                            for r in records]}, f, indent=1, default=float)
    return acc


def rerender(config, run_folder, out):
    """Re-render a finished map's run folder (its results.json: runs and timings) into `out`,
    without re-running it (e.g. after a change to this report)."""
    saved = json.loads((epath.Path(run_folder) / "results.json").read_text())
    geometry.register_rewards(config)
    return render(config, out, saved["runs"], saved["timings"])
