"""Per-run measures (stuck detector, steps to 0.9, early reward) on constructed curves, and the
verdict logic on constructed tables, including "held at N of M step sizes"."""

import numpy as np
import pytest

from bandits import measures, verdicts


def _curves(final_reward, final_entropy, k=40):
    reward = np.linspace(0.0, final_reward, k)
    entropy = np.linspace(4.0, final_entropy, k)
    queries = 100 * (np.arange(k) // 3 + 1)
    return reward, entropy, queries


@pytest.mark.parametrize("final_reward, final_entropy, stuck", [
    (0.96, 0.001, True),    # collapsed onto a near-peak action (the paper's IPO at 68 or 72)
    (0.60, 0.04, True),     # collapsed far from the peak
    (0.995, 0.001, False),  # collapsed onto the peak: converged, not stuck
    (0.96, 0.30, False),    # short of the peak but still spread: still learning
    (0.979, 0.049, True),   # just inside both thresholds
    (0.989, 0.001, False),  # collapsed next to the peak (r(69) = e^{-0.01}): converged
    (0.98, 0.01, False),    # exactly 0.98·max is not below it
])
def test_stuck_detector_on_constructed_curves(final_reward, final_entropy, stuck):
    m = measures.run_measures(*_curves(final_reward, final_entropy), eval_every=5,
                              max_reward=1.0)
    assert m["stuck"] is stuck
    assert m["collapsed"] is (final_entropy < 0.05)
    assert m["final_reward"] == pytest.approx(final_reward)


def test_run_measures_hand_computed():
    reward = np.array([0.1, 0.5, 0.89, 0.9, 0.95, 0.2, 1.0, 1.0])  # first ≥ 0.9 at entry 3
    entropy = np.full(8, 1.0)
    queries = np.array([100, 100, 200, 200, 300, 300, 400, 400])
    m = measures.run_measures(reward, entropy, queries, eval_every=25, max_reward=1.0)
    assert m["steps_to_0.9"] == 100 and m["queries_to_0.9"] == 200
    assert m["reward@25"] == 0.1 and m["reward@50"] == 0.5 and m["reward@100"] == 0.9
    assert m["reward@200"] == 1.0 and m["final_reward"] == 1.0
    assert m["mean_reward"] == pytest.approx(reward.mean())
    never = measures.run_measures(reward * 0.5, entropy, queries, eval_every=25, max_reward=1.0)
    assert never["steps_to_0.9"] is None and never["queries_to_0.9"] is None
    # A max reward below 1 scales the threshold: 0.9 · 0.5 = 0.45 is first reached at entry 1.
    half = measures.run_measures(reward, entropy, queries, eval_every=25, max_reward=0.5)
    assert half["steps_to_0.9"] == 50


def test_median_iqr_counts_never_as_infinite():
    x = [10, 20, 30, None, None]
    v = measures.values([{"s": s} for s in x], "s")
    assert measures.median_iqr(v) == (30.0, 20.0, np.inf)
    assert measures.median_iqr([1.0, 2.0, 3.0, 4.0]) == (2.5, 1.0, 4.0)
    assert measures.fmt_median_iqr(v, 0) == "30 [20, never]"
    assert np.isnan(measures.values([{"a": 1}], "b")[0])


def test_paired_wins():
    a = np.array([0.9, 0.8, 0.95, 0.7, 0.9])
    assert verdicts.wins(a, a - 0.05, "final_reward")
    assert not verdicts.wins(a, a - 0.01, "final_reward")        # within the 0.02 margin
    assert not verdicts.wins(a - 0.05, a, "final_reward")
    # One stuck seed cannot flip a paired median: B wins 4 of 5 seeds by 0.1.
    b = a + 0.1
    b[0] = 0.2
    assert verdicts.wins(b, a, "final_reward") and not verdicts.wins(a, b, "final_reward")
    # Steps: lower is better; never (∞) loses to any finite number; ∞ vs ∞ is a tie.
    inf = np.inf
    assert verdicts.wins([50, 60, 70], [80, 90, inf], "steps_to_0.9")
    assert not verdicts.wins([inf, inf, inf], [inf, inf, inf], "steps_to_0.9")
    assert not verdicts.wins([50, 60, 70], [52, 63, 74], "steps_to_0.9")  # within 5 steps
    assert verdicts.why_not(a, a - 0.01, "final_reward") == (
        "tie: median paired advantage +0.01 within ±0.02")
    assert verdicts.why_not([50, 60, 70], [30, 40, 50], "steps_to_0.9") == (
        "reversed: B ahead by a median paired 20")
    assert verdicts.why_not(a, a - 0.05, "final_reward") == ""
    with pytest.raises(ValueError, match="one value per seed"):
        verdicts.wins([1.0, 2.0], [1.0], "final_reward")


def test_labels():
    assert verdicts.label(True, [True, True, True, True]) == "held"
    assert verdicts.label(False, [False] * 4) == "did not hold"
    assert verdicts.label(True, [True, False, True, False]) == (
        "held at 2 of 4 step sizes; held at the best lrs")
    assert verdicts.label(False, [False, True, False, False]) == (
        "held at 1 of 4 step sizes; not at the best lrs")
    assert verdicts.label(True, [False] * 3) == "held at 0 of 3 step sizes; held at the best lrs"
    assert verdicts.finding_label(["held", "held"]) == "held"
    assert verdicts.finding_label(["did not hold"] * 3) == "did not hold"
    assert verdicts.finding_label(["held", "held at 1 of 4 step sizes; held at the best lrs",
                                   "did not hold"]) == (
        "held for 1 of 3 comparisons, partly (some step sizes) for 1")


def _table(values_a, values_b, best_a, best_b):
    """Records of methods A and B on R1: {lr: per-seed reward@100} for verdict seeds 10–14,
    plus selection seeds (which the verdict must ignore: they say the opposite)."""
    records = []
    for alg, table in (("A", values_a), ("B", values_b)):
        for lr, vals in table.items():
            for i, v in enumerate(vals):
                records.append(dict(study="main", role="verdict", reward="R1", algorithm=alg,
                                    learning_rate=lr, seed=10 + i, **{"reward@100": v}))
            records.append(dict(study="main", role="selection", reward="R1", algorithm=alg,
                                learning_rate=lr, seed=0, **{"reward@100": 1.0 - vals[0]}))
    return records, {("R1", "A"): best_a, ("R1", "B"): best_b}


def test_compare_on_constructed_tables():
    lrs = (1e-3, 3e-3, 1e-2, 3e-2)
    base = np.array([0.5, 0.52, 0.48, 0.51, 0.49])
    # A beats B by 0.1 at two matched lrs, ties at the other two; best lrs: A 1e-2 vs B 1e-3.
    a = {lr: base + d for lr, d in zip(lrs, (0.0, 0.0, 0.1, 0.1))}
    b = {lr: base for lr in lrs}
    records, best = _table(a, b, 1e-2, 1e-3)
    res = verdicts.compare(records, best, "R1", "A", "B", "reward@100")
    assert [w for w, _, _ in res["matched"].values()] == [False, False, True, True]
    assert res["best"][0] and res["best"][1:3] == (1e-2, 1e-3)
    assert res["label"] == "held at 2 of 4 step sizes; held at the best lrs"
    # Everywhere better → held; everywhere worse → did not hold.
    records, best = _table({lr: base + 0.1 for lr in lrs}, b, 1e-3, 1e-3)
    assert verdicts.compare(records, best, "R1", "A", "B", "reward@100")["label"] == "held"
    records, best = _table(b, {lr: base + 0.1 for lr in lrs}, 1e-3, 1e-3)
    assert verdicts.compare(records, best, "R1", "A", "B", "reward@100")["label"] == (
        "did not hold")
