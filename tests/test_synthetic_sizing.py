"""The synthetic study's sizing (Min/Skew lengths, the Skew cap) and the proxy-RM checks on π_ref
pairs, on constructed inputs and the default config (verdicts: test_synthetic_verdicts.py)."""

import os

import numpy as np
import pytest

from configs import synthetic as synthetic_config
from synthetic import measures, study, tasks

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
    assert np.isnan(measures.rank_correlation(mean, count, 0, 2))  # only 2 bins with ≥ 5
    assert measures.rank_correlation(mean, count, 0, 3) == pytest.approx(-1.0)
    # bins 1…5 (bin 6 has < 5 samples): ranks of (5, 4, 3, 3.5, 1) = (4, 3, 1, 2, 0)
    r = np.corrcoef(np.arange(5), [4, 3, 1, 2, 0])[0, 1]
    assert measures.rank_correlation(mean, count, 0, 6) == pytest.approx(r)
    assert np.isnan(measures.rank_correlation(mean, count, 4, 6))


def test_cli_never_overwrites_a_run_folder(tmp_path):
    import subprocess
    import sys

    (tmp_path / "config.json").write_text("{}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "synthetic", f"--out={tmp_path}"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "config.json").read_text() == "{}"
