"""The synthetic study's measures, learning-rate selection on held-out seeds and verdicts (at
each method's best lr and at every matched lr), on constructed curves: no training."""

import json

import ml_collections
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from synthetic import findings, measures, plots, report, study

RATES = (1e-4, 3e-4, 1e-3)


def test_verdict_wording():
    assert measures.verdict([True, True, True]) == "held"
    assert measures.verdict([True, False, True]) == "held at 2 of 3 step sizes"
    assert measures.verdict([False, False]) == "did not hold"
    with pytest.raises(ValueError):
        measures.verdict([])


def test_steps_to_and_value_at_step():
    y = np.array([[30, 20, 10, 2, 1], [30, 29, 28, 27, 26]], float)
    np.testing.assert_array_equal(measures.steps_to(y, 3.0, 2), [6, np.inf])
    np.testing.assert_array_equal(measures.steps_to(-y, -27.0, 1, lower_is_better=False), [1, 3])
    np.testing.assert_array_equal(measures.value_at_step(y, 3, 2), [10, 28])
    assert np.isnan(measures.value_at_step(y, 20, 2)).all()
    assert measures.median_iqr([24, 28]) == (26.0, 24.0, 28.0)
    assert measures.median_iqr([4, np.inf, 8, np.inf]) == (np.inf, 4.0, np.inf)
    assert measures.beats([4, 6, 7], [8, 8, 8], [9, 9, 9], [0, 0, 0])  # steps decide first
    assert not measures.beats([4, 6, np.inf], [8, 8, 8], [0, 0, 0], [0, 0, 0])  # every seed
    assert measures.beats([8, 8], [8, 8], [0, 0], [1, 1])  # equal steps: the final value decides
    assert not measures.beats([8, 8], [8, 8], [1, 1], [1, 1])  # equal: not beaten …
    assert measures.beats([8, 8], [8, 8], [1, 1], [1, 1], strict=False)  # … but no worse
    assert measures.beats([np.inf] * 2, [np.inf] * 2, [3, 3], [5, 5])  # neither reaches it
    assert not measures.beats([np.inf] * 2, [np.inf] * 2, [3, 6], [5, 5])
    assert measures.beats([np.inf], [np.inf], [5], [3], lower_is_better=False)


# ----------------------------------------------------------------------------- selection


def test_best_index_hand_values():
    crit = [[3.0, 5.0], [2.0, 9.0], [np.nan, 0.0]]  # medians 4, 5.5, (non-finite: never)
    assert measures.best_index(crit) == 0
    assert measures.best_index(crit, lower_is_better=False) == 1
    assert measures.best_index([[1.0], [1.0], [2.0]]) == 0  # a tie goes to the earlier rate
    assert measures.best_index([[np.inf], [np.nan]]) is None
    with pytest.raises(ValueError, match="criterion"):
        measures.best_index([[], []])


def test_best_index_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        crit = rng.integers(0, 5, (4, 3)).astype(float)
        crit[rng.random((4, 3)) < 0.05] = np.nan
        for lower in (True, False):
            best, pick = None, None
            for r in range(4):  # plain loop: sorted middle value, strict improvement
                if not all(np.isfinite(crit[r])):
                    continue
                med = sorted(crit[r])[1]
                if best is None or (med < best if lower else med > best):
                    best, pick = med, r
            assert measures.best_index(crit, lower) == pick


def _constructed_study(speeds, selection=None, algorithms=("onpolicy_dpo", "offline_dpo")):
    """Min Length curves length_t = 30·exp(−k t) per (algorithm, lr index): seed 0 chooses the
    rates (its speed from `selection`, default the same k), seeds 1–3 judge (k·1.00/1.01/1.02)."""
    config = ml_collections.ConfigDict(dict(
        study="length", tasks=("min",), algorithms=algorithms, selection_seeds=1,
        target_fraction=0.1, early_steps=(4, 8)))
    t = np.arange(30)
    curves, records = {}, []
    for (a, i), k in speeds.items():
        k0 = (selection or {}).get((a, i), k)
        y = np.stack([30 * np.exp(-k0 * t)]
                     + [30 * np.exp(-k * (1 + 0.01 * s) * t) for s in range(3)])
        curves[measures.curve_key("min", a, RATES[i])] = {"length": y, "gold": -y,
                                                          "kl_ref": 0 * y}
        records.append(dict(algorithm=a, steps_per_iteration=2))
    info = dict(learning_rates=RATES, tasks={})
    return measures.Study(config, records, curves, info)


# on-policy DPO fast at the two small rates, offline DPO fast at the largest
FAST, SLOW = 0.3, 0.1
SPEEDS = {("onpolicy_dpo", 0): FAST, ("offline_dpo", 0): SLOW,
          ("onpolicy_dpo", 1): FAST, ("offline_dpo", 1): SLOW,
          ("onpolicy_dpo", 2): SLOW, ("offline_dpo", 2): FAST}


def test_finding_held_at_two_of_three_step_sizes_on_a_constructed_table():
    s = _constructed_study(SPEEDS)
    assert s.target("min") == pytest.approx(3.0)  # no π_ref measure: the curves' first value
    s.info["tasks"] = {"min": {"ref_mean_length": 40.0}}
    assert s.target("min") == pytest.approx(4.0)  # 0.1 · π_ref's measured mean length
    s.info["tasks"] = {}
    # 30·e^{−k·t} ≤ 3 ⇔ t ≥ ln 10 / k: k = 0.3(·1.00/1.01/1.02) → t = 8 (16 steps) for every
    # verdict seed; k = 0.1 → t = 24, 23, 23 (48, 46, 46 steps; median 46, ratio 46/16 = 2.9)
    steps, _, early = s.runs("min", "onpolicy_dpo", 1e-4)
    assert len(steps) == 3 and steps[0] == 16 and early[4][0] == pytest.approx(30 * np.exp(-0.6))
    _, best, matched, evidence = findings._compare(s, "min", "onpolicy_dpo", "offline_dpo", "x")
    assert matched == "held at 2 of 3 step sizes", evidence
    assert "16 vs 46 steps, ×2.9" in evidence and "46 vs 16 steps, ×0.3" in evidence
    # best rates (seed 0): on-policy 1e-4 (k 0.3; a tie with 3e-4 goes to the first), offline
    # 1e-3 (k 0.3): the same curves on every verdict seed, so neither beats the other
    assert (s.best_lr("min", "onpolicy_dpo"), s.best_lr("min", "offline_dpo")) == (1e-4, 1e-3)
    assert best == "did not hold" and "best lr (0.0001 vs 0.001) ✗: 16 vs 16 steps" in evidence
    rows = findings.findings(s)
    # reaching the target no later than the other (ties allowed): held at the best rates
    assert [r[1:3] for r in rows if "reaches the target" in r[0]] == [
        ("held", "held at 2 of 3 step sizes")]


def test_best_lr_is_chosen_on_the_selection_seed_only():
    """Seed 0 alone makes on-policy DPO look fastest at 1e-3 (k = 1): that rate is chosen, and
    the verdict, on seeds 1–3 where it is slow there, does not hold; the matched-rate verdict
    does not change, since it never sees seed 0."""
    s = _constructed_study(SPEEDS, selection={("onpolicy_dpo", 2): 1.0})
    # criterion = mean over the 30 iterations of 30·e^{−t}: (1 − e^{−30}) / (1 − e^{−1})
    assert s.criterion("min", "onpolicy_dpo", 1e-3) == pytest.approx(
        [(1 - np.exp(-30)) / (1 - np.exp(-1))])
    assert s.best_lr("min", "onpolicy_dpo") == 1e-3
    _, best, matched, evidence = findings._compare(s, "min", "onpolicy_dpo", "offline_dpo", "x")
    assert (best, matched) == ("did not hold", "held at 2 of 3 step sizes")
    assert "best lr (0.001 vs 0.001) ✗: 46 vs 16 steps" in evidence
    # now seed 0 makes offline DPO look best at 1e-4, where it is slow on the verdict seeds
    s = _constructed_study(SPEEDS, selection={("offline_dpo", 0): 1.0})
    _, best, matched, evidence = findings._compare(s, "min", "onpolicy_dpo", "offline_dpo", "x")
    assert (best, matched) == ("held", "held at 2 of 3 step sizes")
    assert "best lr (0.0001 vs 0.0001) ✓: 16 vs 46 steps, ×2.9" in evidence


def test_diverged_method_is_not_judged_at_its_best_lr():
    s = _constructed_study(SPEEDS, selection={("offline_dpo", i): np.nan for i in range(3)})
    assert s.best_lr("min", "offline_dpo") is None
    _, best, matched, _ = findings._compare(s, "min", "onpolicy_dpo", "offline_dpo", "x")
    assert best == findings.NOT_JUDGED and matched == "held at 2 of 3 step sizes"


def test_study_requires_selection_and_verdict_seeds():
    s = _constructed_study(SPEEDS)
    for bad in (0, 4):
        config = s.config.copy_and_resolve_references()
        config.selection_seeds = bad
        with pytest.raises(ValueError, match="selection_seeds"):
            measures.Study(config, s.records, s.curves, s.info)
    config = synthetic_config.get_config("tiny")
    config.unlock()
    config.selection_seeds = config.seeds
    with pytest.raises(ValueError, match="config.selection_seeds"):
        study.validate(config)


# ----------------------------------------------------------------------------- run folder


def test_run_folder_round_trip_keeps_learning_rates(tmp_path):
    s = _constructed_study({("onpolicy_dpo", 0): 0.3, ("onpolicy_dpo", 2): 0.1})
    records = [dict(task="min", algorithm="onpolicy_dpo", seed=0)]
    report.save(str(tmp_path), records, s.curves, {"learning_rates": [1e-4, 1e-3]})
    back_records, back, info = report.load(str(tmp_path))
    assert sorted(back) == ["min/onpolicy_dpo/0.0001", "min/onpolicy_dpo/0.001"]
    np.testing.assert_allclose(back["min/onpolicy_dpo/0.001"]["length"],
                               s.curves["min/onpolicy_dpo/0.001"]["length"], atol=1e-4)
    assert back_records == records and info["learning_rates"] == [1e-4, 1e-3]


def test_token_bandit_report_renders_from_constructed_curves(tmp_path):
    """The token-bandit study (reward, higher is better) goes through the same report and
    plots: on-policy DPO rises faster than offline DPO at both rates here; `report.render`
    rewrites the same report from the saved run folder."""
    config = synthetic_config.get_config("token_quick")
    config.unlock()
    config.algorithms = ("onpolicy_dpo", "offline_dpo")
    config.learning_rate_grid = (1e-3, 3e-3)
    t = np.arange(20)
    curves, records = {}, []
    for task in ("R1", "R2"):
        for a, k in (("onpolicy_dpo", 0.3), ("offline_dpo", 0.1)):
            for lr in config.learning_rate_grid:
                y = (1 - 0.8 * np.exp(-k * t))[None].repeat(config.seeds, 0)
                curves[measures.curve_key(task, a, lr)] = {"gold": y, "kl_ref": 0 * y}
                records.append(dict(task=task, algorithm=a, steps_per_iteration=2))
    info = dict(learning_rates=config.learning_rate_grid, tasks={}, reference={},
                total_seconds=1.0, build_seconds=0.0, timings={})
    names = plots.write_plots(config, records, curves, info, str(tmp_path))
    rows, rm_rows = report.write_report(str(tmp_path / "report.md"), config, records, curves,
                                        info, names)
    # target 0.5·(1 + 0.2) = 0.6: 1 − 0.8e^{−kt} ≥ 0.6 ⇔ t ≥ ln 2 / k → 3 (k 0.3), 7 (k 0.1);
    # both rates have the same curves: the best rate is the first
    assert ("R1: on-policy beats offline when the peak has low π_ref", "held", "held",
            "onpolicy_dpo vs offline_dpo: best lr (0.001 vs 0.001) ✓: 6 vs 14 steps, ×2.3 "
            "(final 1.0 vs 0.9); matched lr 0.001 ✓: 6 vs 14 steps, ×2.3 (final 1.0 vs 0.9); "
            "lr 0.003 ✓: 6 vs 14 steps, ×2.3 (final 1.0 vs 0.9)") in rows
    assert rm_rows == []
    assert all((tmp_path / n).exists() for n in names)
    text = (tmp_path / "report.md").read_text()
    assert "| algorithm | lr | selection: mean gold |" in text and "| 0.001 ★ |" in text
    report.save(str(tmp_path), records, curves, info)
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    (tmp_path / "report.md").unlink()
    assert report.render(str(tmp_path)) == (rows, rm_rows)
    assert (tmp_path / "report.md").read_text() == text
    assert json.loads((tmp_path / "results.json").read_text())["info"]["learning_rates"]
