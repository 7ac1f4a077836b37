"""Verdicts that survive the step size (issue 9, item 2).

A method-vs-method claim "A beats B on measure m" is judged on the verdict seeds only:

- paired by seed (both runs of a seed share the SFT initialisation and evaluation prompts), A
  wins when the median over seeds of the paired difference (A − B, or B − A when lower is
  better) exceeds `margin`; ∞ − ∞ (neither reaches 0.9) counts as a tie;
- (a) at each method's own best lr (chosen on the held-out selection seeds), and (b) at every
  lr of the grid, matched;
- label: "held" (a and all M matched), "did not hold" (neither a nor any matched), otherwise
  "held at N of M step sizes" and whether it held at the best lrs.
"""

from __future__ import annotations

import numpy as np

from bandits import measures

# (measure, higher is better, margin): 0.02 of reward, one evaluation interval of steps.
MEASURES = {
    "final_reward": (True, 0.02), "reward@25": (True, 0.02), "reward@50": (True, 0.02),
    "reward@100": (True, 0.02), "reward@200": (True, 0.02), "mean_reward": (True, 0.02),
    "steps_to_0.9": (False, 5.0), "queries_to_0.9": (False, 100.0),
}


def paired_difference(a, b, higher_is_better):
    """Per-seed advantage of A over B; ∞ − ∞ → 0 (a tie)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs one value per seed on both sides, got "
                         f"{a.shape} and {b.shape}")
    with np.errstate(invalid="ignore"):
        d = a - b if higher_is_better else b - a
    return np.where(np.isnan(d), 0.0, d)


def advantage(a, b, measure):
    """Median over seeds of A's paired advantage over B on `measure` (> 0: A better)."""
    return float(np.median(paired_difference(a, b, MEASURES[measure][0])))


def wins(a, b, measure):
    """True when A beats B on `measure` (median paired advantage > the measure's margin)."""
    return advantage(a, b, measure) > MEASURES[measure][1]


def why_not(a, b, measure):
    """Why "A beats B" failed: a tie within the margin, or B ahead."""
    adv, margin = advantage(a, b, measure), MEASURES[measure][1]
    if adv > margin:
        return ""
    if adv >= -margin:
        return f"tie: median paired advantage {adv:+g} within ±{margin:g}"
    return f"reversed: B ahead by a median paired {-adv:g}"


def label(best_held, matched):
    """Combine (a) the best-lr verdict and (b) the matched-lr verdicts into one label."""
    n, m = int(sum(matched)), len(matched)
    if best_held and n == m:
        return "held"
    if not best_held and n == 0:
        return "did not hold"
    return (f"held at {n} of {m} step sizes" + ("" if m == 0 else
            ("; held at the best lrs" if best_held else "; not at the best lrs")))


def _by_seed(records, **where):
    rs = [r for r in records if all(r[k] == v for k, v in where.items())]
    return sorted(rs, key=lambda r: r["seed"])


def compare(records, best, reward, a, b, measure, *, study="main"):
    """Judge "A beats B on `reward` by `measure`" at the best lrs and at each matched lr.

    Returns {"label", "best": (won, lr_a, lr_b, vals_a, vals_b), "matched": {lr: (won, vals_a,
    vals_b)}} with vals the per-seed measure (verdict seeds).
    """
    base = dict(study=study, reward=reward, role="verdict")
    lr_a, lr_b = best[(reward, a)], best[(reward, b)]
    va = measures.values(_by_seed(records, algorithm=a, learning_rate=lr_a, **base), measure)
    vb = measures.values(_by_seed(records, algorithm=b, learning_rate=lr_b, **base), measure)
    out = {"best": (wins(va, vb, measure), lr_a, lr_b, va, vb), "matched": {}}
    lrs = sorted({r["learning_rate"] for r in records if r["study"] == study})
    for lr in lrs:
        xa = measures.values(_by_seed(records, algorithm=a, learning_rate=lr, **base), measure)
        xb = measures.values(_by_seed(records, algorithm=b, learning_rate=lr, **base), measure)
        out["matched"][lr] = (wins(xa, xb, measure), xa, xb)
    out["label"] = label(out["best"][0], [v[0] for v in out["matched"].values()])
    return out


def finding_label(pair_labels):
    """A finding made of several comparisons: held if all held, did not hold if none held at
    any step size, else 'held for K of P comparisons, partly (some step sizes) for J'."""
    held = sum(lbl == "held" for lbl in pair_labels)
    failed = sum(lbl == "did not hold" for lbl in pair_labels)
    if held == len(pair_labels):
        return "held"
    if failed == len(pair_labels):
        return "did not hold"
    partly = len(pair_labels) - held - failed
    return (f"held for {held} of {len(pair_labels)} comparisons"
            + (f", partly (some step sizes) for {partly}" if partly else ""))
