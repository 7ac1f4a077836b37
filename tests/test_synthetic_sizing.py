"""The synthetic study's sizing (Min/Skew lengths, the Skew cap), the proxy-RM checks on π_ref
pairs and the per-learning-rate verdicts, on constructed inputs and the tiny config."""

import os

import ml_collections
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from synthetic import report, study, tasks

# ----------------------------------------------------------------------------- sizing


def test_default_lengths_start_well_above_target_and_reach_64_tokens():
    config = synthetic_config.get_config()
    d = config.data
    pmf = tasks.length_pmf(d.max_new_tokens, d.mode)
    assert d.max_new_tokens == 64 and pmf[63] > 0 and len(pmf) == 64  # lengths 1…63 (+ EOS)
    mean = float(np.dot(np.arange(64), pmf))
    assert 28 < mean < 34, mean                       # ≈ 31 tokens at the start
    assert config.target_fraction * mean < 0.15 * mean  # the target is ≈ 3 tokens
    assert len(study.learning_rates_of(config)) == 3
    study.validate(config)


def test_skew_cap_is_reference_median_on_a_fixed_seed():
    rng = np.random.default_rng(0)
    prompts = tasks.language_prompts(rng, 500, 32)
    resp, mask = tasks.language_responses(rng, np.repeat(prompts, 2, 0),
                                          tasks.transition_matrix(32), tasks.length_pmf(64, 24.0))
    lengths = tasks.response_lengths(resp, mask)
    brute = sorted(lengths.tolist())[(len(lengths) - 1) // 2]
    cap = tasks.median_length(lengths)
    assert cap == brute and 20 <= cap <= 35
    pairs = tasks.preference_pairs(rng, "skew", prompts, resp.reshape(500, 2, -1),
                                   mask.reshape(500, 2, -1), skew_cap=cap)
    both = np.concatenate([pairs["chosen_length"], pairs["rejected_length"]])
    assert both.max() == cap
    # the lower half of π_ref is covered as it is: every length becomes min(length, cap)
    cut, cut_mask = tasks.truncate(resp, mask, np.full(len(resp), cap))
    np.testing.assert_array_equal(tasks.response_lengths(cut, cut_mask),
                                  np.minimum(lengths, cap))
    assert np.mean(both < cap) > 0.3
    with pytest.raises(ValueError, match="skew_cap"):
        tasks.preference_pairs(rng, "skew", prompts, resp.reshape(500, 2, -1),
                               mask.reshape(500, 2, -1), skew_cap=0)


# ----------------------------------------------------------------------------- RM on π_ref


def test_pair_accuracy_hand_value():
    scores = [[2.0, 1.0], [0.0, 1.0], [1.0, 1.0], [5.0, 3.0]]
    gold = [[-1, -4], [-2, -7], [-3, -9], [-5, -5]]  # last pair: a tie in gold, not judged
    acc, n = tasks.pair_accuracy(scores, gold)
    assert n == 3 and acc == pytest.approx((1 + 0 + 0.5) / 3)


def test_pair_accuracy_matches_brute_force_count():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (300, 2)).astype(float)
    gold = -rng.integers(0, 6, (300, 2)).astype(float)
    hits = judged = 0
    for (s0, s1), (g0, g1) in zip(scores, gold):
        if g0 == g1:
            continue
        judged += 1
        if s0 == s1:
            hits += 0.5
        elif (s0 > s1) == (g0 > g1):
            hits += 1
    acc, n = tasks.pair_accuracy(scores, gold)
    assert n == judged and acc == pytest.approx(hits / judged)
    with pytest.raises(ValueError, match="must both be"):
        tasks.pair_accuracy(scores[:, :1], gold[:, :1])


def test_score_by_length_and_monotone_against_brute_force():
    rng = np.random.default_rng(4)
    lengths = rng.integers(0, 8, 200)
    scores = -lengths + rng.normal(0, 0.1, 200)
    mean, count = tasks.score_by_length(lengths, scores, 9)
    for ell in range(10):
        sel = scores[lengths == ell]
        assert count[ell] == len(sel)
        if len(sel):
            assert mean[ell] == pytest.approx(sel.mean())
        else:
            assert np.isnan(mean[ell])
    assert tasks.monotone_decreasing(mean, count)[0]
    bumped = mean.copy()
    bumped[5] = mean[4] + 1
    mono, rises, bins = tasks.monotone_decreasing(bumped, count)
    assert not mono and rises == [5] and bins == 8


def test_rank_correlation_hand_values():
    mean = [None, 5.0, 4.0, 3.0, 3.5, 1.0, 0.0]
    count = [0, 9, 9, 9, 9, 9, 2]
    assert np.isnan(report.rank_correlation(mean, count, 0, 2))  # only 2 bins with ≥ 5
    assert report.rank_correlation(mean, count, 0, 3) == pytest.approx(-1.0)
    # bins 1…5 (bin 6 has < 5 samples): ranks of (5, 4, 3, 3.5, 1) = (4, 3, 1, 2, 0)
    r = np.corrcoef(np.arange(5), [4, 3, 1, 2, 0])[0, 1]
    assert report.rank_correlation(mean, count, 0, 6) == pytest.approx(r)
    assert np.isnan(report.rank_correlation(mean, count, 4, 6))


# ----------------------------------------------------------------------------- verdicts


def test_verdict_wording():
    assert report.verdict([True, True, True]) == "held"
    assert report.verdict([True, False, True]) == "held at 2 of 3 step sizes"
    assert report.verdict([False, False]) == "did not hold"
    with pytest.raises(ValueError):
        report.verdict([])


def test_steps_to_and_value_at_step():
    y = np.array([[30, 20, 10, 2, 1], [30, 29, 28, 27, 26]], float)
    np.testing.assert_array_equal(report.steps_to(y, 3.0, 2), [6, np.inf])
    np.testing.assert_array_equal(report.steps_to(-y, -27.0, 1, lower_is_better=False), [1, 3])
    np.testing.assert_array_equal(report.value_at_step(y, 3, 2), [10, 28])
    assert np.isnan(report.value_at_step(y, 20, 2)).all()
    assert report.median_iqr([24, 28]) == (26.0, 24.0, 28.0)
    assert report.median_iqr([4, np.inf, 8, np.inf]) == (np.inf, 4.0, np.inf)
    assert report.beats([4, 6, 7], [8, 8, 8], [9, 9, 9], [0, 0, 0])  # steps decide first
    assert not report.beats([4, 6, np.inf], [8, 8, 8], [0, 0, 0], [0, 0, 0])  # every seed
    assert report.beats([8, 8], [8, 8], [0, 0], [1, 1])  # equal steps: the final value decides
    assert not report.beats([8, 8], [8, 8], [1, 1], [1, 1])  # equal: not beaten …
    assert report.beats([8, 8], [8, 8], [1, 1], [1, 1], strict=False)  # … but no worse
    assert report.beats([np.inf] * 2, [np.inf] * 2, [3, 3], [5, 5])  # neither reaches it
    assert not report.beats([np.inf] * 2, [np.inf] * 2, [3, 6], [5, 5])
    assert report.beats([np.inf], [np.inf], [5], [3], lower_is_better=False)


def _constructed_study(speeds):
    """Min Length curves length_t = 30·exp(−k t) per (algorithm, lr); 3 seeds each."""
    config = ml_collections.ConfigDict(dict(
        study="length", tasks=("min",), algorithms=("onpolicy_dpo", "offline_dpo"),
        target_fraction=0.1, early_steps=(4, 8)))
    rates = (1e-4, 3e-4, 1e-3)
    t = np.arange(30)
    curves, records = {}, []
    for (a, i), k in speeds.items():
        y = np.stack([30 * np.exp(-k * (1 + 0.01 * s) * t) for s in range(3)])
        curves[f"min/{a}/{rates[i]:g}"] = {"length": y, "gold": -y, "kl_ref": 0 * y}
        records.append(dict(algorithm=a, steps_per_iteration=2))
    info = dict(learning_rates=rates, tasks={})
    return report.Study(config, records, curves, info)


def test_run_folder_round_trip_keeps_learning_rates(tmp_path):
    s = _constructed_study({("onpolicy_dpo", 0): 0.3, ("onpolicy_dpo", 2): 0.1})
    records = [dict(task="min", algorithm="onpolicy_dpo", seed=0)]
    report.save(str(tmp_path), records, s.curves, {"learning_rates": [1e-4, 1e-3]})
    back_records, back, info = report.load(str(tmp_path))
    assert sorted(back) == ["min/onpolicy_dpo/0.0001", "min/onpolicy_dpo/0.001"]
    np.testing.assert_allclose(back["min/onpolicy_dpo/0.001"]["length"],
                               s.curves["min/onpolicy_dpo/0.001"]["length"], atol=1e-4)
    assert back_records == records and info["learning_rates"] == [1e-4, 1e-3]


def test_finding_held_at_two_of_three_step_sizes_on_a_constructed_table():
    fast, slow = 0.3, 0.1
    speeds = {("onpolicy_dpo", 0): fast, ("offline_dpo", 0): slow,
              ("onpolicy_dpo", 1): fast, ("offline_dpo", 1): slow,
              ("onpolicy_dpo", 2): slow, ("offline_dpo", 2): fast}
    s = _constructed_study(speeds)
    assert s.target("min") == pytest.approx(3.0)
    # 30·e^{−k·t} ≤ 3 ⇔ t ≥ ln 10 / k: k = 0.3(·1.00/1.01/1.02) → t = 8 (16 steps) for every
    # seed; k = 0.1 → t = 24, 23, 23 (48, 46, 46 steps; median 46, ratio 46/16 = 2.9)
    steps, _, early = s.runs("min", "onpolicy_dpo", 1e-4)
    assert steps[0] == 16 and early[4][0] == pytest.approx(30 * np.exp(-0.6))
    finding, verdict, evidence = report._compare(s, "min", "onpolicy_dpo", "offline_dpo", "x")
    assert verdict == "held at 2 of 3 step sizes", evidence
    assert "16 vs 46 steps, ×2.9" in evidence and "46 vs 16 steps, ×0.3" in evidence
    rows = report.findings(s)
    assert [r[1] for r in rows if "reaches the target" in r[0]] == ["held at 2 of 3 step sizes"]



def test_token_bandit_report_renders_from_constructed_curves(tmp_path):
    """The token-bandit study (reward, higher is better) goes through the same report and
    plots: on-policy DPO rises faster than offline DPO at both rates here."""
    from synthetic import plots

    config = synthetic_config.get_config("token_quick")
    config.unlock()
    config.algorithms = ("onpolicy_dpo", "offline_dpo")
    config.learning_rate_grid = (1e-3, 3e-3)
    t = np.arange(20)
    curves, records = {}, []
    for task in ("R1", "R2"):
        for a, k in (("onpolicy_dpo", 0.3), ("offline_dpo", 0.1)):
            for lr in config.learning_rate_grid:
                y = (1 - 0.8 * np.exp(-k * t))[None].repeat(2, 0)
                curves[report.curve_key(task, a, lr)] = {"gold": y, "kl_ref": 0 * y}
                records.append(dict(task=task, algorithm=a, steps_per_iteration=2))
    info = dict(learning_rates=config.learning_rate_grid, tasks={}, reference={},
                total_seconds=1.0, build_seconds=0.0, timings={})
    names = plots.write_plots(config, records, curves, info, str(tmp_path))
    rows = report.write_report(str(tmp_path / "report.md"), config, records, curves, info, names)
    # target 0.5·(1 + 0.2) = 0.6: 1 − 0.8e^{−kt} ≥ 0.6 ⇔ t ≥ ln 2 / k → 3 (k 0.3), 7 (k 0.1)
    assert ("R1: on-policy beats offline when the peak has low π_ref", "held",
            "onpolicy_dpo vs offline_dpo: lr 0.001 ✓: 6 vs 14 steps, ×2.3 (final 1.0 vs 0.9); "
            "lr 0.003 ✓: 6 vs 14 steps, ×2.3 (final 1.0 vs 0.9)") in rows
    assert all((tmp_path / n).exists() for n in names)


def test_cli_never_overwrites_a_run_folder(tmp_path):
    import subprocess
    import sys

    (tmp_path / "config.json").write_text("{}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "synthetic", f"--out={tmp_path}"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "config.json").read_text() == "{}"
