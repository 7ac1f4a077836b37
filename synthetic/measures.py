"""Per-run measures of a synthetic study, the learning-rate selection and the verdict helpers.

Measures (robust to saturation; every number is a median over seeds, IQR = 25th–75th
percentile):
  steps to target  gradient steps until a run's curve first reaches the target (∞ = never).
                   Min/Skew: length ≤ target_fraction · π_ref's mean length (on the task's
                   2 × pref_prompts π_ref samples, not the first 16-sample batch); token bandit:
                   reward ≥ 0.5 · (1 + reference reward). Mode: |length − mode| ≤ 2.
  value at step s  the curve at the iteration holding gradient step s (config.early_steps).
  final            mean over the last 10% of iterations.

Seeds are split: seeds 0…S−1 (S = config.selection_seeds) only choose each (task, method)'s
best learning rate; the verdicts use the other seeds only. Selection criterion: the mean of the
task's gold measure over training (every iteration's policy, i.e. the area under the curve,
which rewards both speed and level) — Min/Skew: mean gold length (lower is better), Mode:
mean |length − mode| (= −mean gold reward, lower is better), token bandit: mean gold reward
(higher is better); per rate the median over the selection seeds, best rate = argmin/argmax
(non-finite runs never chosen; ties go to the earlier rate of the grid) — `best_index`.

A method "beats" another when, for every verdict seed (paired: seed s shares its keys across
methods), it reaches the target in fewer steps, or in as many (also: both never) with a better
final value (`beats`); medians are the evidence shown. `verdict(flags)` turns outcomes into
"held" (every step size), "held at N of M step sizes" or "did not hold" (none).
"""

from __future__ import annotations

import numpy as np

EARLY_STEPS_DEFAULT = (10, 20, 40)


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


def curve_key(task, algorithm, learning_rate) -> str:
    """Curves are keyed "task/algorithm/lr" (lr printed with %g)."""
    return f"{task}/{algorithm}/{float(learning_rate):g}"


def best_index(criterion_RxS, lower_is_better=True):
    """The best rate's index from criterion values [rates, selection seeds]: the median over
    seeds per rate, then argmin (lower is better) or argmax; a rate with any non-finite value is
    never chosen, ties go to the first. None when no rate is finite."""
    c = np.asarray(criterion_RxS, np.float64)
    if c.ndim != 2 or c.shape[1] == 0:
        raise ValueError(f"best_index: criterion must be [rates, seeds ≥ 1], got {c.shape}")
    ok = np.isfinite(c).all(1)
    if not ok.any():
        return None
    sign = 1.0 if lower_is_better else -1.0
    loss = np.where(ok, sign * np.median(np.where(np.isfinite(c), c, 0.0), 1), np.inf)
    return int(np.argmin(loss))


class Study:
    """Measures of one study's curves: `metric(task)`, `target(task)`, `best_lr(task, method)`
    (chosen on the selection seeds) and per-run vectors over the verdict seeds (`runs`)."""

    def __init__(self, config, records, curves, info):
        self.config, self.records, self.curves, self.info = config, records, curves, info
        self.rates = [float(r) for r in info["learning_rates"]]
        self.spi = {r["algorithm"]: r["steps_per_iteration"] for r in records}
        self.early = tuple(config.get("early_steps", EARLY_STEPS_DEFAULT))
        self.seeds = next(iter(next(iter(curves.values())).values())).shape[0]
        self.selection_seeds = int(config.get("selection_seeds", 0))
        if not 1 <= self.selection_seeds < self.seeds:
            raise ValueError(f"config.selection_seeds must lie in [1, {self.seeds}) (the curves "
                             f"hold {self.seeds} seeds), got {self.selection_seeds}")

    def curve(self, task, algorithm, lr, metric, seeds="verdict"):
        """[seeds, I] over the verdict seeds, the selection seeds or "all"; None when not run."""
        c = self.curves.get(curve_key(task, algorithm, lr))
        if c is None:
            return None
        s = self.selection_seeds
        return {"verdict": c[metric][s:], "selection": c[metric][:s], "all": c[metric]}[seeds]

    def metric(self, task):
        if self.config.study != "length":
            return "gold", False
        return ("mode_distance", True) if task == "mode" else ("length", True)

    def target(self, task):
        """Min/Skew: target_fraction · π_ref's mean length (measured on the task's π_ref
        samples, info["tasks"][task]["ref_mean_length"]; else the median first value of the
        curves); Mode: 2; token bandit: 0.5 · (1 + the median first reward)."""
        ref = self.info.get("tasks", {}).get(task, {}).get("ref_mean_length")
        if self.config.study == "length" and task != "mode" and ref is not None:
            return self.config.target_fraction * float(ref)
        metric, _ = self.metric(task)
        y0 = np.median([c[metric][:, 0] for k, c in self.curves.items()
                        if k.startswith(task + "/")])
        if self.config.study != "length":
            return 0.5 * (1 + y0)
        return 2.0 if task == "mode" else self.config.target_fraction * y0

    def criterion(self, task, algorithm, lr):
        """Per selection seed: the mean over training of the task's gold measure, or None."""
        y = self.curve(task, algorithm, lr, self.metric(task)[0], seeds="selection")
        return None if y is None else np.asarray(y, np.float64).mean(1)

    def best_lr(self, task, algorithm):
        """The algorithm's best rate on this task by `criterion` (`best_index`), or None when
        it was not run or diverged at every rate."""
        crit = [self.criterion(task, algorithm, lr) for lr in self.rates]
        if any(c is None for c in crit):
            return None
        i = best_index(np.stack(crit), self.metric(task)[1])
        return None if i is None else self.rates[i]

    def runs(self, task, algorithm, lr):
        """Over the verdict seeds: (steps to target [S], final [S], {step: value [S]}), or None
        when not run."""
        metric, lower = self.metric(task)
        y = self.curve(task, algorithm, lr, metric)
        if y is None:
            return None
        spi = self.spi[algorithm]
        tail = max(y.shape[1] // 10, 1)
        return (steps_to(y, self.target(task), spi, lower), y[:, -tail:].mean(1),
                {s: value_at_step(y, s, spi) for s in self.early})


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
