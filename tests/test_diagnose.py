"""modeseek.diagnose: hand values, brute-force NumPy/SciPy references, sample → exact
convergence, the recommendation logic, and bad input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import modeseek as ms

JIT = pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])

# 3 actions: π_ref = (0.5, 0.3, 0.2), β = 1, r = (0, ln 2, ln 4) so exp(r/β) = (1, 2, 4).
P3 = np.array([0.5, 0.3, 0.2])
R3 = np.log([1.0, 2.0, 4.0])


@JIT
def test_hand_values_exact(wrap):
    m = wrap(functools.partial(ms.diagnose_categorical, beta=1.0, top_fraction=0.2,
                               data_probs=jnp.array([0.0, 0.0, 1.0]), bins=10))(np.log(P3), R3)
    # Z = 0.5 + 0.6 + 0.8 = 1.9; E_ref[exp(2r)] = 0.5 + 1.2 + 3.2 = 4.9; ESS/n = 1.9²/4.9
    np.testing.assert_allclose(m["ess_ratio"], 3.61 / 4.9, rtol=1e-6)
    # KL = E_π*[r] − log Z = (0.6 ln 2 + 0.8 ln 4)/1.9 − ln 1.9 = 2.2 ln 2/1.9 − ln 1.9
    np.testing.assert_allclose(m["kl_opt_ref"], 2.2 * math.log(2) / 1.9 - math.log(1.9),
                               rtol=1e-5)
    # log π_ref falls as r rises: U = (0.75, 0.35, 0.1), V = (0.25, 0.65, 0.9) = 1 − U → ρ = −1
    np.testing.assert_allclose(m["spearman"], -1.0, atol=1e-6)
    # top 0.2 of the mass by reward = action 2 (mass 0.2): U(2) = ½·0.2 = 0.1
    np.testing.assert_allclose(m["top_quantile"], 0.1, atol=1e-6)
    np.testing.assert_allclose(m["ref_peak_mass"], 0.2, atol=1e-6)
    # data all on action 2 (the lowest log π_ref): F_data = 1 vs F_ref = 0.2 there
    np.testing.assert_allclose(m["ks"], 0.8, atol=1e-6)
    # 10 bins over [ln 0.2, ln 0.5]: the actions fall in bins 0, 4, 9 → min(0.2, 1) = 0.2
    np.testing.assert_allclose(m["overlap"], 0.2, atol=1e-6)


@JIT
def test_hand_values_samples(wrap):
    m = wrap(functools.partial(ms.diagnose_samples, beta=1.0, top_k=1))(
        np.log(P3), R3, data_ref_logps=jnp.full(3, math.log(0.2)))
    np.testing.assert_allclose(m["ess_ratio"], 7**2 / (3 * 21), rtol=1e-6)  # w = 1, 2, 4
    np.testing.assert_allclose(m["kl_opt_ref"], 10 * math.log(2) / 7 - math.log(7 / 3),
                               rtol=1e-5)  # (2 ln 2 + 4 ln 4)/7 − ln(7/3)
    np.testing.assert_allclose(m["spearman"], -1.0, atol=1e-6)
    np.testing.assert_allclose(m["top_quantile"], 0.5 / 3, atol=1e-6)  # lowest of 3: (1 − ½)/3
    np.testing.assert_allclose(m["ks"], 2 / 3, atol=1e-6)
    np.testing.assert_allclose(m["overlap"], 1 / 3, atol=1e-6)


# ------------------------------------------------------------------ brute force


def _np_exact(p, r, beta, q, top_fraction, bins):
    """Loops over actions, float64, straight from the definitions."""
    A = len(p)
    pstar = p * np.exp(r / beta) / np.sum(p * np.exp(r / beta))
    w = pstar / p
    ess = 1.0 / sum(p[a] * w[a] ** 2 for a in range(A))
    kl = sum(pstar[a] * math.log(pstar[a] / p[a]) for a in range(A))
    l = np.log(p)
    def mid_cdf(x):
        return np.array([sum(p[b] for b in range(A) if x[b] < x[a])
                         + 0.5 * sum(p[b] for b in range(A) if x[b] == x[a]) for a in range(A)])

    U, V = mid_cdf(l), mid_cdf(r)
    cov = np.sum(p * (U - p @ U) * (V - p @ V))
    rho = cov / math.sqrt(np.sum(p * (U - p @ U) ** 2) * np.sum(p * (V - p @ V) ** 2))
    left, num = top_fraction, 0.0
    for a in sorted(range(A), key=lambda a: (-r[a], a)):
        take = min(p[a], left)
        num += take * U[a]
        left -= take
    qn = q / q.sum()
    ks = max(abs(sum(qn[b] - p[b] for b in range(A) if l[b] <= l[a])) for a in range(A))
    edges = np.linspace(l.min(), l.max(), bins + 1)
    hp, _ = np.histogram(l, edges, weights=p)
    hq, _ = np.histogram(l, edges, weights=qn)
    return dict(ess_ratio=ess, kl_opt_ref=kl, spearman=rho, top_quantile=num / top_fraction,
                ks=ks, overlap=np.minimum(hp, hq).sum(), ref_peak_mass=p[r == r.max()].sum())


@JIT
def test_exact_matches_numpy_on_random_categoricals(wrap):
    rng = np.random.default_rng(0)
    fn = wrap(lambda logp, r, q, beta: ms.diagnose_categorical(
        logp, r, beta=beta, top_fraction=0.3, data_probs=q, bins=7))
    for trial in range(4):
        A = 9  # one shape: one compile
        p = rng.dirichlet(np.ones(A))
        r = rng.integers(0, 4, A).astype(np.float64) / 3  # ties in the reward
        q = rng.dirichlet(np.ones(A))
        beta = float(rng.uniform(0.2, 2.0))
        want = _np_exact(p, r, beta, q, 0.3, 7)
        got = fn(np.log(p), r, q, beta)
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=2e-4, atol=2e-5, err_msg=f"{k} {trial}")


@JIT
def test_samples_match_numpy_and_scipy(wrap):
    rng = np.random.default_rng(1)
    l = rng.integers(-8, -1, 40).astype(np.float32)   # ties on both sides
    r = rng.integers(0, 5, 40).astype(np.float32)
    d = rng.integers(-9, 0, 25).astype(np.float32)
    beta = 0.7
    got = wrap(functools.partial(ms.diagnose_samples, beta=beta, top_k=6, bins=5))(
        l, r, data_ref_logps=d)
    w = np.exp(r.astype(np.float64) / beta)
    np.testing.assert_allclose(got["ess_ratio"], w.sum() ** 2 / (40 * (w**2).sum()), rtol=1e-5)
    np.testing.assert_allclose(got["kl_opt_ref"],
                               (w * r).sum() / w.sum() / beta - np.log(w.mean()), rtol=1e-5)
    np.testing.assert_allclose(got["spearman"], stats.spearmanr(l, r).statistic, rtol=1e-5)
    np.testing.assert_allclose(got["ks"], stats.ks_2samp(d, l).statistic, rtol=1e-6)
    top = np.argsort(-r, kind="stable")[:6]
    quant = (stats.rankdata(l) - 0.5) / 40
    np.testing.assert_allclose(got["top_quantile"], quant[top].mean(), rtol=1e-6)
    z = np.concatenate([d, l])
    edges = np.linspace(z.min(), z.max(), 6)
    hd, _ = np.histogram(d, edges)
    hl, _ = np.histogram(l, edges)
    np.testing.assert_allclose(got["overlap"], np.minimum(hd / 25, hl / 40).sum(), rtol=1e-6)


def test_batch_axes_equal_rows():
    rng = np.random.default_rng(2)
    l, r = rng.normal(size=(3, 30)), rng.normal(size=(3, 30))
    d = rng.normal(size=(3, 20))
    batched = ms.diagnose_samples(l, r, beta=0.5, data_ref_logps=d)
    for i in range(3):
        row = ms.diagnose_samples(l[i], r[i], beta=0.5, data_ref_logps=d[i])
        for k in row:
            np.testing.assert_allclose(batched[k][i], row[k], rtol=1e-6, err_msg=k)


# ------------------------------------------------------------------ convergence


def test_sample_estimates_converge_to_exact():
    rng = np.random.default_rng(3)
    A = 8
    p = rng.dirichlet(np.full(A, 2.0))
    r = np.round(rng.uniform(0, 1, A), 1)           # 1 decimal: ties in the reward
    q = rng.dirichlet(np.full(A, 2.0))
    beta, frac, bins = 0.25, 0.2, 6
    exact = ms.diagnose_categorical(np.log(p), r, beta=beta, top_fraction=frac,
                                    data_probs=q, bins=bins)
    key_y, key_d = jax.random.split(jax.random.key(0))
    errors = {}
    for n in (100, 200_000):
        y = jax.random.categorical(key_y, jnp.log(p), shape=(n,))
        d = jax.random.categorical(key_d, jnp.log(q), shape=(n,))
        est = jax.jit(functools.partial(ms.diagnose_samples, beta=beta,
                                        top_k=int(frac * n), bins=bins))(
            jnp.log(p)[y], jnp.asarray(r, jnp.float32)[y], data_ref_logps=jnp.log(p)[d])
        errors[n] = {k: abs(float(est[k]) - float(exact[k])) for k in est}
    # The exact values are far from trivial ones, so a 0.02 tolerance cannot pass by accident.
    assert 0.05 < float(exact["ess_ratio"]) < 0.95 and float(exact["kl_opt_ref"]) > 0.1
    assert abs(float(exact["spearman"])) > 0.1 and float(exact["ks"]) > 0.1
    for k, err in errors[200_000].items():
        assert err < 0.02, (k, err, float(exact[k]))
    # ... and the small sample is visibly worse on most measures (it is an estimate, not a copy).
    worse = sum(errors[100][k] > errors[200_000][k] for k in errors[100])
    assert worse >= 4, errors


# ------------------------------------------------------------------ recommendation


def test_recommend_constructed_cases():
    mis = ms.recommend({"ess_ratio": 0.02, "kl_opt_ref": 3.8, "spearman": -0.6})
    assert mis.method_class == "onpolicy_negative" and mis.on_policy and mis.negative_gradient
    assert "C1 misaligned" in mis.reasons[0] and not mis.off_policy_correction
    ok = ms.recommend({"ess_ratio": 0.5, "ks": 0.05})
    assert ok.method_class == "offline_adequate" and not ok.on_policy
    assert any("C2" in s for s in ok.reasons)
    uncovered = ms.recommend({"ess_ratio": 0.5, "ks": 0.6})
    assert uncovered.method_class == "onpolicy_negative"
    assert any("C2 fails" in s for s in uncovered.reasons)
    reuse = ms.recommend({"ess_ratio": 0.5}, planned_reuse=8)
    assert reuse.off_policy_correction and "off-policy correction" in reuse.advice[-1]
    assert not ms.recommend({"ess_ratio": 0.5}, planned_reuse=2).off_policy_correction
    # The boundary is the documented heuristic, inclusive on the aligned side.
    assert ms.recommend({"ess_ratio": ms.diagnose.ALIGNED_ESS}).method_class == "offline_adequate"
    assert ms.recommend({"ess_ratio": 0.099}).method_class == "onpolicy_negative"
    assert ok.numbers == {"ess_ratio": 0.5, "ks": 0.05}


def test_recommend_on_the_papers_bandit_rewards():
    """R1 (peak 70, where π_ref ≈ 0.002) → on-policy + negative gradient; R2 (peak 20, near the
    interior mode) → offline adequate, at the study's β = 0.1 (π_ref written out here, from
    the tanh-Cauchy bin masses of PAPER.md §4)."""
    edges = np.arctanh(np.clip(np.linspace(-1, 1, 101), -1 + 1e-15, 1 - 1e-15))
    p = np.diff(0.5 + np.arctan((edges + 0.7) / 0.4) / np.pi)
    a = np.arange(100)
    verdict = {}
    for name, peak in (("R1", 70), ("R2", 20)):
        m = ms.diagnose_categorical(np.log(p), np.exp(-(((a - peak) / 10.0) ** 2)), beta=0.1)
        verdict[name] = ms.recommend(m).method_class
    assert verdict == {"R1": "onpolicy_negative", "R2": "offline_adequate"}


# ------------------------------------------------------------------ bad input


def test_bad_input_names_the_argument():
    l, r = np.zeros(5), np.zeros(5)
    with pytest.raises(ValueError, match="beta"):
        ms.ess_ratio(r, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        ms.diagnose_categorical(l, r, beta=-1.0)
    with pytest.raises(ValueError, match=r"ref_logps\[5\].*rewards\[4\]"):
        ms.spearman(l, r[:4])
    with pytest.raises(ValueError, match=r"ref_logp\[5\].*data_probs\[3\]"):
        ms.coverage_ks_exact(l, np.ones(3))
    with pytest.raises(ValueError, match="k must be"):
        ms.top_k_quantile(l, r, k=6)
    with pytest.raises(ValueError, match="bins"):
        ms.coverage_overlap(l, r, bins=0)
    with pytest.raises(ValueError, match="top_fraction"):
        ms.top_quantile_exact(l, r, top_fraction=1.5)
    with pytest.raises(ValueError, match="rewards must have a non-empty last axis"):
        ms.ess_ratio(np.zeros((2, 0)), beta=1.0)
    with pytest.raises(ValueError, match="ess_ratio"):
        ms.recommend({"kl_opt_ref": 1.0})
    with pytest.raises(ValueError, match="one geometry"):
        ms.recommend({"ess_ratio": np.ones(3)})
