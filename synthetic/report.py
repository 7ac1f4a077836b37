"""report.md for a synthetic study: setup, proxy-RM quality, a results table per task and the
paper's findings (PAPER.md §1, §5), each stated with whether it held here and the numbers.

Final values are means over the last 10% of iterations and over seeds (± = std over seeds; a
pairwise comparison whose gap is within the two stds is reported as inconclusive);
"steps to target" = gradient steps until the seed-mean gold curve first reaches the target
(length tasks: half-way from the reference's gold to 0, i.e. half the reference length on
Min/Skew; token bandit: 0.5 · (1 + reference reward)).
"""

from __future__ import annotations

import numpy as np

import modeseek


def _final(records, task, algorithm, field):
    vals = [r[field] for r in records if r["task"] == task and r["algorithm"] == algorithm]
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (float("nan"),) * 2


def _target(config, curves, task):
    g0 = np.mean([c["gold"][:, 0].mean() for n, c in curves.items() if n.startswith(task + "/")])
    return g0 / 2 if config.study == "length" else 0.5 * (1 + g0)


def steps_to_target(curves, task, algorithm, target, steps_per_iteration):
    c = curves.get(f"{task}/{algorithm}")
    if c is None:
        return None
    hits = np.nonzero(c["gold"].mean(0) >= target)[0]
    return int(hits[0]) * steps_per_iteration if hits.size else None


def _spi(records, algorithm):
    return next(r["steps_per_iteration"] for r in records if r["algorithm"] == algorithm)


def table(config, records, curves, task):
    algs = [a for a in config.algorithms]
    target = _target(config, curves, task)
    lengths = config.study == "length"
    head = ("| algorithm | on-policy | neg. grad | final gold | "
            + ("final length | final \\|len − mode\\| | " if lengths else "")
            + "KL(π‖π_ref) | steps to target |")
    rows = [head, "|" + "---|" * (8 if lengths else 6)]
    for a in sorted(algs, key=lambda a: -_final(records, task, a, "final_gold")[0]):
        alg = modeseek.get_algorithm(a)
        g, gs = _final(records, task, a, "final_gold")
        n = steps_to_target(curves, task, a, target, _spi(records, a))
        rows.append(
            f"| {a} | {'yes' if alg.on_policy else 'no'} | "
            f"{'yes' if alg.negative_gradient else 'no'} | {g:.2f} ± {gs:.2f} | "
            + (f"{_final(records, task, a, 'final_length')[0]:.1f} | "
               f"{_final(records, task, a, 'final_mode_distance')[0]:.1f} | " if lengths else "")
            + f"{_final(records, task, a, 'final_kl_ref')[0]:.1f} | "
            f"{'never' if n is None else n} |")
    return f"Target gold {target:.2f}.\n\n" + "\n".join(rows)


def _compare(records, task, a, b, what):
    (ga, sa), (gb, sb) = _final(records, task, a, "final_gold"), _final(records, task, b,
                                                                         "final_gold")
    if np.isnan(ga) or np.isnan(gb):
        return None
    # a gap smaller than the seeds' spread is not called either way
    seeds = len({r["seed"] for r in records})
    verdict = ("inconclusive (gap within seed std)" if abs(ga - gb) <= sa + sb
               else "held" if ga > gb else "did not hold")
    if seeds < 2:
        verdict += " (1 seed: no spread to judge by)"
    return (f"{task}: {what}", verdict,
            f"final gold {a} {ga:.2f} ± {sa:.2f} vs {b} {gb:.2f} ± {sb:.2f}")


def findings(config, records, curves, info):
    rows = []
    if config.study == "length":
        disjoint = [t for t in ("min", "skew") if t in config.tasks]
        for t in disjoint:
            rows.append(_compare(records, t, "onpolicy_dpo", "offline_dpo",
                                 "on-policy sampling beats offline data (peaks disjoint)"))
            for b in ("onpolicy_bofn", "onpolicy_rwr"):
                rows.append(_compare(records, t, "onpolicy_dpo", b,
                                     "a negative gradient beats max-likelihood on-policy"))
            rows.append(_compare(records, t, "offline_dpo", "pref_ft",
                                 "offline: a negative gradient beats Pref-FT"))
            rows.append(_fastest(config, records, curves, t))
        if "mode" in config.tasks and "min" in config.tasks:
            spread = lambda t: np.ptp([_final(records, t, a, "final_gold")[0]
                                       for a in config.algorithms])
            s_mode, s_min = spread("mode"), spread("min")
            rows.append(("mode: all methods end about the same when the reward peak is on the "
                         "reference's mode (spread < ½ of Min Length's)",
                         "held" if s_mode < 0.5 * s_min else "did not hold",
                         f"spread of final gold across algorithms: mode {s_mode:.2f}, "
                         f"min {s_min:.2f}"))
        for t, m in info["tasks"].items():
            acc = m["rm_heldout_accuracy"]
            rows.append((f"{t}: the proxy RM beats chance on held-out pairs",
                         "held" if acc > 0.5 else "did not hold",
                         f"accuracy {acc:.3f} on {m['heldout_pairs']} pairs"))
    else:
        if "R1" in config.tasks:
            rows.append(_compare(records, "R1", "onpolicy_dpo", "offline_dpo",
                                 "on-policy beats offline when the peak has low π_ref"))
            for b in ("onpolicy_bofn", "onpolicy_rwr"):
                rows.append(_compare(records, "R1", "onpolicy_dpo", b,
                                     "a negative gradient beats max-likelihood"))
            rows.append(_fastest(config, records, curves, "R1"))
        if "R1" in config.tasks and "R2" in config.tasks:
            spread = lambda t: np.ptp([_final(records, t, a, "final_gold")[0]
                                       for a in config.algorithms])
            s2, s1 = spread("R2"), spread("R1")
            rows.append(("R2: methods end closer together when the peak is at π_ref's mode",
                         "held" if s2 < s1 else "did not hold",
                         f"spread of final reward: R2 {s2:.3f}, R1 {s1:.3f}"))
    return [r for r in rows if r is not None]


def _fastest(config, records, curves, task):
    target = _target(config, curves, task)
    steps = {a: steps_to_target(curves, task, a, target, _spi(records, a))
             for a in config.algorithms}
    reached = {a: s for a, s in steps.items() if s is not None}
    if "onpolicy_dpo" not in steps:
        return None
    best = min(reached.values()) if reached else None
    ok = steps["onpolicy_dpo"] is not None and steps["onpolicy_dpo"] <= best
    tied = [a for a, s in reached.items() if s == best and a != "onpolicy_dpo"]
    verdict = ("held (tied with " + ", ".join(tied) + ")" if ok and tied
               else "held" if ok else "did not hold")
    listing = ", ".join(f"{a} {'never' if s is None else s}" for a, s in steps.items())
    return (f"{task}: on-policy DPO (on-policy + negative gradient) reaches the target first",
            verdict, f"steps to gold {target:.2f}: {listing}")


def write_report(path, config, records, curves, info, plots):
    rows = findings(config, records, curves, info)
    lines = [f"# Synthetic study: {config.study}", "",
             f"{len(records)} runs ({len(config.tasks)} tasks × {len(config.algorithms)} "
             f"algorithms × {config.seeds} seeds), {config.iterations} iterations each; "
             f"B/C = {config.prompts_per_iteration} prompts × C = {config.samples_per_prompt} "
             f"samples, M = {config.minibatch_prompts}, T = {config.reuse}; offline steps use "
             f"{config.offline_pairs} pairs. Wall time {info['total_seconds']:.0f} s "
             f"(task building {info['build_seconds']:.0f} s, compile included).", "",
             "## Findings", "", "| finding | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {f} | **{v}** | {e} |" for f, v, e in rows]
    ref = info["reference"]
    lines += ["", "## Reference and tasks", "",
              f"Reference SFT loss {ref.get('sft_loss_first', float('nan')):.3f} → "
              f"{ref.get('sft_loss_last', float('nan')):.3f}.", ""]
    for t, m in info["tasks"].items():
        lines.append(f"- **{t}**: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float)
                                                 else f"{k} {v}" for k, v in m.items()))
    for t in config.tasks:
        lines += ["", f"## {t}", "", table(config, records, curves, t)]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Timings (s)", "", "| algorithm | compile (first chunk) | run |",
              "|---|---|---|"]
    lines += [f"| {a} | {t['compile_s']:.1f} | {t['run_s']:.1f} |"
              for a, t in info["timings"].items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows
