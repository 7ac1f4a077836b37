"""report.md for a synthetic study (and the run folder's results.json / metrics.jsonl: `save`,
`load`): setup, the proxy RMs judged on π_ref, a table per task and
the paper's findings (PAPER.md §1, §5), each judged at every learning rate of the grid.

Measures (robust to saturation; every number is a median over seeds, IQR = 25th–75th
percentile):
  steps to target  gradient steps until a run's curve first reaches the target (∞ = never).
                   Min/Skew: length ≤ target_fraction · π_ref's mean length; token bandit:
                   reward ≥ 0.5 · (1 + reference reward). Mode: |length − mode| ≤ 2.
  value at step s  the curve at the iteration holding gradient step s (config.early_steps).
  final            mean over the last 10% of iterations.
A method "beats" another at one learning rate when, for every seed (paired: seed s shares its
keys across methods), it reaches the target in fewer steps, or in as many (also: both never) with
a better final value (`beats`); medians are the evidence shown.
`verdict(flags)` turns the per-rate outcomes into "held" (every rate), "held at N of M step
sizes" or "did not hold" (none).
"""

from __future__ import annotations

import json
import os

import numpy as np

from synthetic import diagnose

EARLY_STEPS_DEFAULT = (10, 20, 40)


# ----------------------------------------------------------------------------- measures


def steps_to(y_SxI, target, steps_per_iteration, lower_is_better=True):
    """Per seed: gradient steps until y first reaches `target` (≤ when lower is better, else
    ≥); np.inf when never. Row i of a curve is the policy after i iterations."""
    y = np.asarray(y_SxI, np.float64)
    hit = y <= target if lower_is_better else y >= target
    first = np.argmax(hit, 1).astype(np.float64) * steps_per_iteration
    return np.where(hit.any(1), first, np.inf)


def value_at_step(y_SxI, step, steps_per_iteration):
    """Per seed: the curve at the iteration holding gradient step `step` (NaN past the end)."""
    y = np.asarray(y_SxI, np.float64)
    i = int(np.ceil(step / steps_per_iteration))
    return y[:, i] if i < y.shape[1] else np.full(y.shape[0], np.nan)


def median_iqr(x):
    """(median, 25th, 75th percentile); the quartiles are sample values (no interpolation, so
    'never' = ∞ stays ∞), the median is np.median's (the mean of the middle two)."""
    x = np.asarray(x, np.float64)
    return (float(np.median(x)), float(np.percentile(x, 25, method="lower")),
            float(np.percentile(x, 75, method="higher")))


def beats(steps_a, steps_b, final_a, final_b, lower_is_better=True, strict=True):
    """Whether method a beats b at one rate, paired by seed (seed s draws the same prompts and
    sampling keys for every method): for every seed, a's (steps to target, final value) is
    lexicographically better than b's (`strict`) or no worse (not `strict`) — fewer steps, or
    the same (also both never) and a better final value."""
    sign = 1.0 if lower_is_better else -1.0
    for sa, sb, fa, fb in zip(steps_a, steps_b, final_a, final_b, strict=True):
        ka, kb = (float(sa), sign * float(fa)), (float(sb), sign * float(fb))
        if not (ka < kb if strict else ka <= kb):
            return False
    return True


def verdict(flags) -> str:
    """'held' / 'held at N of M step sizes' / 'did not hold' from per-rate booleans."""
    flags = [bool(f) for f in flags]
    if not flags:
        raise ValueError("verdict: no step sizes to judge")
    n, m = sum(flags), len(flags)
    return "held" if n == m else "did not hold" if n == 0 else f"held at {n} of {m} step sizes"


# ----------------------------------------------------------------------------- study access


def curve_key(task, algorithm, learning_rate) -> str:
    """Curves are keyed "task/algorithm/lr" (lr printed with %g)."""
    return f"{task}/{algorithm}/{float(learning_rate):g}"


class Study:
    """Measures of one study's curves: `metric(task)`, `target(task)`, per-run vectors."""

    def __init__(self, config, records, curves, info):
        self.config, self.records, self.curves, self.info = config, records, curves, info
        self.rates = [float(r) for r in info["learning_rates"]]
        self.spi = {r["algorithm"]: r["steps_per_iteration"] for r in records}
        self.early = tuple(config.get("early_steps", EARLY_STEPS_DEFAULT))

    def curve(self, task, algorithm, lr, metric):
        c = self.curves.get(curve_key(task, algorithm, lr))
        return None if c is None else c[metric]

    def metric(self, task):
        if self.config.study != "length":
            return "gold", False
        return ("mode_distance", True) if task == "mode" else ("length", True)

    def target(self, task):
        metric, _ = self.metric(task)
        y0 = np.median([c[metric][:, 0] for k, c in self.curves.items()
                        if k.startswith(task + "/")])
        if self.config.study != "length":
            return 0.5 * (1 + y0)
        return 2.0 if task == "mode" else self.config.target_fraction * y0

    def runs(self, task, algorithm, lr):
        """(steps to target [S], final [S], {step: value [S]}) or None when not run."""
        metric, lower = self.metric(task)
        y = self.curve(task, algorithm, lr, metric)
        if y is None:
            return None
        spi = self.spi[algorithm]
        tail = max(y.shape[1] // 10, 1)
        return (steps_to(y, self.target(task), spi, lower), y[:, -tail:].mean(1),
                {s: value_at_step(y, s, spi) for s in self.early})


def _mark(flag):
    return " ✓" if flag else " ✗"


def _n(v):
    return "never" if not np.isfinite(v) else f"{v:.0f}"


def _fmt_steps(steps):
    m, lo, hi = median_iqr(steps)
    return f"{_n(m)} [{_n(lo)}–{_n(hi)}]"


def table(study, task):
    metric, _ = study.metric(task)
    head = (f"| algorithm | lr | steps to {metric} {'≤' if metric != 'gold' else '≥'} "
            f"{study.target(task):.2f} [IQR] | "
            + " | ".join(f"{metric} @ {s}" for s in study.early)
            + f" | final {metric} | final KL(π‖π_ref) |")
    rows = [head, "|" + "---|" * (5 + len(study.early))]
    for a in study.config.algorithms:
        for lr in study.rates:
            r = study.runs(task, a, lr)
            if r is None:
                continue
            steps, final, early = r
            kl = study.curve(task, a, lr, "kl_ref")
            tail = max(kl.shape[1] // 10, 1)
            rows.append(f"| {a} | {lr:g} | {_fmt_steps(steps)} | "
                        + " | ".join(f"{np.median(early[s]):.1f}" for s in study.early)
                        + f" | {np.median(final):.2f} | {np.median(kl[:, -tail:].mean(1)):.1f} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- findings


def _compare(study, task, a, b, what):
    """One finding 'a beats b' judged at every rate; evidence = median steps (ratio) per rate."""
    flags, parts = [], []
    _, lower = study.metric(task)
    for lr in study.rates:
        ra, rb = study.runs(task, a, lr), study.runs(task, b, lr)
        if ra is None or rb is None:
            return None
        flags.append(beats(ra[0], rb[0], ra[1], rb[1], lower))
        sa, sb = np.median(ra[0]), np.median(rb[0])
        ratio = f", ×{sb / sa:.1f}" if np.isfinite(sa) and np.isfinite(sb) and sa > 0 else ""
        parts.append(f"lr {lr:g}{_mark(flags[-1])}: {_n(sa)} vs {_n(sb)} steps{ratio} (final "
                     f"{np.median(ra[1]):.1f} vs {np.median(rb[1]):.1f})")
    return (f"{task}: {what}", verdict(flags), f"{a} vs {b}: " + "; ".join(parts))


def _first(study, task, a="onpolicy_dpo"):
    if a not in study.config.algorithms:
        return None
    flags, parts = [], []
    _, lower = study.metric(task)
    for lr in study.rates:
        mine = study.runs(task, a, lr)
        others = {b: study.runs(task, b, lr) for b in study.config.algorithms if b != a}
        flags.append(all(beats(mine[0], r[0], mine[1], r[1], lower, strict=False)
                         for r in others.values()))
        best = min(others, key=lambda b: np.median(others[b][0]))
        parts.append(f"lr {lr:g}{_mark(flags[-1])}: {_n(np.median(mine[0]))} steps, next {best} "
                     f"{_n(np.median(others[best][0]))}")
    return (f"{task}: on-policy DPO (on-policy + negative gradient) reaches the target no later "
            "than any other method", verdict(flags), "; ".join(parts))


def _spread(study, task, lr):
    """Spread across algorithms of the median final gold, over the reference's |gold|."""
    finals = [np.median(study.curve(task, a, lr, "gold")[:, -max(
        study.curve(task, a, lr, "gold").shape[1] // 10, 1):].mean(1))
        for a in study.config.algorithms]
    g0 = np.median([study.curve(task, a, lr, "gold")[:, 0] for a in study.config.algorithms])
    return float(np.ptp(finals) / max(abs(g0), 1e-6))


def _overoptimisation(study, task="skew", a="ppo"):
    """PPO's proxy reward rises while its length ends above π_ref's (a finding, not a claim)."""
    flags, parts = [], []
    for lr in study.rates:
        length, proxy = (study.curve(task, a, lr, m) for m in ("length", "train_reward"))
        tail = max(length.shape[1] // 10, 1)
        l0, l1 = np.median(length[:, 0]), np.median(length[:, -tail:].mean(1))
        p0, p1 = np.median(proxy[:, 0]), np.median(proxy[:, -tail:].mean(1))
        flags.append(l1 > l0 and p1 > p0)
        parts.append(f"lr {lr:g}: length {l0:.1f} → {l1:.1f}, proxy {p0:.2f} → {p1:.2f}")
    v = verdict(flags).replace("held", "observed").replace("did not hold", "not observed")
    return (f"{task}: PPO over-optimises the proxy RM (proxy up, length above π_ref's)", v,
            "; ".join(parts))


def rank_correlation(mean_by_length, count, lo, hi, min_count=5):
    """Spearman ρ between length and mean RM score over bins lo ≤ length ≤ hi holding ≥
    min_count π_ref samples (NaN with < 3 such bins)."""
    mean = np.array([np.nan if v is None else v for v in mean_by_length], np.float64)
    x = np.nonzero((np.asarray(count) >= min_count) & (np.arange(len(mean)) >= lo)
                   & (np.arange(len(mean)) <= hi))[0]
    if len(x) < 3:
        return float("nan")
    ranks = np.argsort(np.argsort(mean[x]))
    return float(np.corrcoef(np.arange(len(x)), ranks)[0, 1])


def _rm_row(t, m):
    mean, count = m["rm_score_by_length"], m["rm_count_by_length"]
    split = m.get("skew_cap") or m["ref_median_length"]
    if t == "mode":
        shape = (f"highest mean score at length {m['rm_ref_argmax_length']} (data mode "
                 f"{m['mode']})")
    else:
        mono = "yes" if m["rm_ref_monotone"] else f"no (rises at {m['rm_ref_rises']})"
        shape = (f"score falls monotonically with length: {mono}; Spearman ρ(length, score) "
                 f"{rank_correlation(mean, count, 0, split):+.2f} for lengths ≤ {split}, "
                 f"{rank_correlation(mean, count, split + 1, len(mean)):+.2f} above")
    return (f"{t}: the proxy RM orders gold-labelled π_ref pairs better than chance",
            "held" if m["rm_ref_accuracy"] > 0.5 else "did not hold",
            f"accuracy {m['rm_ref_accuracy']:.3f} on {m['rm_ref_pairs']} π_ref pairs (on its "
            f"own held-out preference pairs {m['rm_heldout_accuracy']:.3f}); {shape}")


def findings(study):
    """[(finding, verdict, evidence)] for the study's tasks."""
    config, rows = study.config, []
    if config.study == "length":
        for t in [t for t in ("min", "skew") if t in config.tasks]:
            rows.append(_compare(study, t, "onpolicy_dpo", "offline_dpo",
                                 "on-policy sampling beats offline data (peaks disjoint); "
                                 "paper: ≈ 2× faster"))
            for b in ("onpolicy_bofn", "onpolicy_rwr"):
                rows.append(_compare(study, t, "onpolicy_dpo", b,
                                     "a negative gradient beats max-likelihood on-policy"))
            rows.append(_compare(study, t, "offline_dpo", "pref_ft",
                                 "offline: a negative gradient beats Pref-FT"))
            rows.append(_first(study, t))
        if "mode" in config.tasks and "min" in config.tasks:
            s = [(_spread(study, "mode", lr), _spread(study, "min", lr)) for lr in study.rates]
            rows.append(("mode: methods end about the same when the reward peak is on the "
                         "reference's mode (spread of final gold / |reference gold| < ½ of Min's)",
                         verdict([a < 0.5 * b for a, b in s]),
                         "; ".join(f"lr {lr:g}{_mark(a < 0.5 * b)}: mode {a:.2f}, min {b:.2f}"
                                   for lr, (a, b) in zip(study.rates, s))))
        if "skew" in config.tasks and "ppo" in config.algorithms:
            rows.append(_overoptimisation(study))
        rows += [_rm_row(t, m) for t, m in study.info["tasks"].items()]
    elif "R1" in config.tasks:
        rows.append(_compare(study, "R1", "onpolicy_dpo", "offline_dpo",
                             "on-policy beats offline when the peak has low π_ref"))
        for b in ("onpolicy_bofn", "onpolicy_rwr"):
            rows.append(_compare(study, "R1", "onpolicy_dpo", b,
                                 "a negative gradient beats max-likelihood"))
        rows.append(_first(study, "R1"))
    return [r for r in rows if r is not None]


def _meta_line(t, m):
    skip = ("rm_score_by_length", "rm_count_by_length")  # diagnose_*: their own table
    return f"- **{t}**: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in m.items()
                                      if k not in skip and not k.startswith("diagnose_"))


def write_report(path, config, records, curves, info, plots):
    study = Study(config, records, curves, info)
    rows = findings(study)
    lines = [f"# Synthetic study: {config.study}", "",
             f"{len(records)} runs ({len(config.tasks)} tasks × {len(config.algorithms)} "
             f"algorithms × {len(study.rates)} learning rates {study.rates} × {config.seeds} "
             f"seeds), {config.iterations} iterations each; B/C = "
             f"{config.prompts_per_iteration} prompts × C = {config.samples_per_prompt} "
             f"samples, M = {config.minibatch_prompts}, T = {config.reuse}; offline steps use "
             f"{config.offline_pairs} pairs. Wall time {info['total_seconds']:.0f} s "
             f"(task building {info['build_seconds']:.0f} s, compile included).", "",
             "Each finding is judged at every learning rate of the grid (median over seeds; see "
             "`synthetic/report.py` for the measures).", "",
             "## Findings", "", "| finding | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {f} | **{v}** | {e} |" for f, v, e in rows]
    ref = info["reference"]
    lines += ["", "## Reference, tasks and proxy RMs", "",
              f"Reference SFT loss {ref.get('sft_loss_first', float('nan')):.3f} → "
              f"{ref.get('sft_loss_last', float('nan')):.3f}.", ""]
    lines += [_meta_line(t, m) for t, m in info["tasks"].items()]
    lines += diagnose.report_lines(info["tasks"])
    for t in config.tasks:
        lines += ["", f"## {t}", "", table(study, t)]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Timings (s)", "", "| algorithm | compile (first chunk) | run |",
              "|---|---|---|"]
    lines += [f"| {a} | {t['compile_s']:.1f} | {t['run_s']:.1f} |"
              for a, t in info["timings"].items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows


# ----------------------------------------------------------------------------- run folder


def save(out, records, curves, info):
    """results.json (records + info) and metrics.jsonl (one line per task/algorithm/seed/
    iteration with every metric)."""
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"runs": records, "info": info}, f, indent=1, default=str)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for name, m in curves.items():
            task, algorithm, lr = name.split("/")
            seeds, iters = next(iter(m.values())).shape
            for s in range(seeds):
                for i in range(iters):
                    row = {k: round(float(v[s, i]), 5) for k, v in m.items()}
                    f.write(json.dumps(dict(task=task, algorithm=algorithm, lr=float(lr), seed=s,
                                            iteration=i, **row)) + "\n")


def load(out):
    """Inverse of `save`: (records, curves, info) from a run folder (to re-render a report)."""
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    rows = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            key = curve_key(r.pop("task"), r.pop("algorithm"), r.pop("lr"))
            seed, it = r.pop("seed"), r.pop("iteration")
            for k, v in r.items():
                rows.setdefault(key, {}).setdefault(k, {})[(seed, it)] = v
    curves = {}
    for key, metrics in rows.items():
        curves[key] = {}
        for k, cells in metrics.items():
            seeds = 1 + max(s for s, _ in cells)
            iters = 1 + max(i for _, i in cells)
            arr = np.zeros((seeds, iters), np.float32)
            for (s, i), v in cells.items():
                arr[s, i] = v
            curves[key][k] = arr
    return results["runs"], curves, results["info"]
