"""Diagnose, before training, whether on-policy sampling and a negative gradient will matter.

Tajwar et al. (ICML 2024) tie the value of on-policy sampling and of a negative gradient to two
geometric conditions (PAPER.md §1): [C1] does the reward's peak sit where π_ref already puts
mass, and [C2] does the preference data cover π_ref? These functions measure both.

Target: π*_β(y) = π_ref(y) · exp(r(y)/β) / Z,  Z = E_ref[exp(r/β)], the optimum of
KL-regularised reward maximisation. Importance weights of π* against π_ref are
w(y) = π*(y)/π_ref(y) = exp(r(y)/β)/Z.

Sample versions take y_1..y_n ~ π_ref (one prompt; leading axes are batch axes, samples on the
last axis) with their log π_ref(y_i) and rewards r_i:

- ESS/n = (Σ w_i)² / (n Σ w_i²) with w_i ∝ exp(r_i/β) (self-normalised; Kish's effective sample
  size). 1 = π* is π_ref; 1/n = one sample carries all of π*'s weight.
- KL(π*‖π_ref) = Σ_i w̄_i r_i/β − log((1/n) Σ_i exp(r_i/β)),  w̄ = w / Σ w, i.e. E_w[r]/β − log Ẑ.
- Spearman ρ of (log π_ref(y_i), r_i), ties given their average rank.
- top-k quantile: the mean, over the k highest-reward samples, of the mid-rank quantile
  (#{j: l_j < l_i} + ½ #{j ≠ i: l_j = l_i} + ½)/n of l_i = log π_ref(y_i) among all n samples.
  ≈ 0.5: the best samples are typical of π_ref; ≈ 0: they are its unlikely tail (misaligned).
- C2: the two-sample KS statistic sup_t |F_data(t) − F_ref(t)| between the preference data's
  log π_ref values and π_ref's own samples' log π_ref, and their overlap Σ_b min(p_b, q_b) over
  `bins` equal bins spanning the pooled range (1 = same distribution, 0 = disjoint).

Exact versions (suffix `_exact`) take a categorical π_ref as log-probabilities over all A
actions, `ref_logp` [..., A] (normalised here), rewards [..., A] and, for C2, the data's action
distribution `data_probs` [..., A]; they are the n → ∞ limits of the sample versions:

- E_ref[w] = 1, so ESS/n → 1/E_ref[w²]; E_ref[w²] = Σ π_ref w² = E_π*[π*/π_ref] = exp(D₂(π*‖π_ref))
  (Rényi divergence of order 2), hence ESS/n → exp(−D₂) = Z² / E_ref[exp(2r/β)], computed as
  2·LSE(log π_ref + r/β) − LSE(log π_ref + 2r/β) in log space. Since KL ≤ D₂: KL ≤ −log(ESS/n).
- KL(π*‖π_ref) = Σ_a π*(a) r(a)/β − log Z.
- Spearman: the π_ref-weighted Pearson correlation of the mid-distribution transforms
  U(a) = P(L < l_a) + ½ P(L = l_a) of L = log π_ref(Y) and V(a) likewise of r(Y), Y ~ π_ref
  (a sample's average rank / n converges to these).
- top quantile: π_ref-weighted mean of U over the top `top_fraction` of π_ref's mass taken in
  decreasing reward order (the boundary action counted fractionally; k/n ↔ top_fraction).
- KS and overlap between the law of log π_ref(Y) for Y ~ data_probs and for Y ~ π_ref (bins over
  [min, max] of log π_ref on the actions either puts mass on).

β sets the scale: for β ≫ the reward's range π* ≈ π_ref and every geometry looks aligned. Use
the β of the KL-regularised objective being trained (the bandit study: 0.1 for r ∈ [0, 1]).
`recommend` turns the measures into PAPER.md §1's advice, returned as data.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from modeseek._checks import check_positive, check_same_shape, is_concrete

# Heuristic thresholds of `recommend` (documented choices, not fitted to any result):
ALIGNED_ESS = 0.1      # ESS/n ≥ 0.1: ≥ 1 in 10 π_ref samples effectively lies in π*'s region,
#                        so a Best-of-10 / offline set of π_ref samples already holds the peak.
COVERED_KS = 0.2       # KS ≤ 0.2 between data and π_ref log-likelihoods: the data covers π_ref.
LARGE_REUSE = 2        # T > 2 gradient steps per batch: only with an off-policy correction.


def _check(beta=None, **arrays):
    if beta is not None:
        check_positive("beta", beta)
    check_same_shape(**arrays)
    for name, a in arrays.items():
        if jnp.ndim(a) < 1 or jnp.shape(a)[-1] < 1:
            raise ValueError(f"{name} must have a non-empty last axis (samples or actions), got "
                             f"shape {list(jnp.shape(a))}")


def _f32(x):  # float32 throughout, as the losses
    return jnp.asarray(x, jnp.float32)


def _kernel(signature, static=()):
    """jit(vectorize(fn)): fn takes one prompt's 1-D arrays, leading axes are batch axes; jitted
    so that eager (notebook) calls compile once per shape rather than dispatch every op."""
    def wrap(fn):
        return functools.partial(jax.jit, static_argnames=static)(
            lambda *args, **kw: jnp.vectorize(functools.partial(fn, **kw),
                                              signature=signature)(*args))
    return wrap


# ------------------------------------------------------------------ sample versions (C1)


def ess_ratio(rewards, *, beta):
    """ESS/n = (Σ w)² / (n Σ w²), w = exp(r/β), over the last axis of `rewards` [..., n]."""
    _check(beta, rewards=rewards)
    logw = _f32(rewards) / beta
    n = logw.shape[-1]
    return jnp.exp(2 * logsumexp(logw, -1) - logsumexp(2 * logw, -1) - math.log(n))


def kl_opt_ref(rewards, *, beta):
    """KL(π*_β‖π_ref) ≈ E_w[r]/β − log mean exp(r/β) from rewards [..., n] of π_ref samples."""
    _check(beta, rewards=rewards)
    logw = _f32(rewards) / beta
    n = logw.shape[-1]
    return (jnp.sum(jax.nn.softmax(logw, -1) * logw, -1)
            - (logsumexp(logw, -1) - math.log(n)))


def _midranks(x):
    """Average 1-based ranks of x [n] (ties share the mean of their positions), O(n log n)."""
    s = jnp.sort(x)
    left = jnp.searchsorted(s, x, side="left")
    right = jnp.searchsorted(s, x, side="right")
    return (left + right + 1) / 2.0


def _pearson(x, y, p=None):
    """(Weighted) Pearson correlation; nan when either side is constant."""
    p = jnp.full(x.shape, 1.0 / x.shape[-1]) if p is None else p
    xc = x - jnp.sum(p * x, -1, keepdims=True)
    yc = y - jnp.sum(p * y, -1, keepdims=True)
    return jnp.sum(p * xc * yc, -1) / jnp.sqrt(jnp.sum(p * xc**2, -1) * jnp.sum(p * yc**2, -1))


def spearman(ref_logps, rewards):
    """Spearman ρ of log π_ref and reward over the last axis [..., n] → [...], ties averaged;
    nan when either is constant."""
    _check(ref_logps=ref_logps, rewards=rewards)
    return _spearman(_f32(ref_logps), _f32(rewards))


@_kernel("(n),(n)->()")
def _spearman(l, r):
    return _pearson(_midranks(l), _midranks(r))


def top_k_quantile(ref_logps, rewards, *, k):
    """Mean mid-rank quantile of log π_ref among all n samples, over the k highest-reward
    samples (`k` static, 1 ≤ k ≤ n; reward ties broken by lower index). [..., n] → [...]."""
    _check(ref_logps=ref_logps, rewards=rewards)
    n = jnp.shape(rewards)[-1]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the number of samples), got {k!r}")
    return _top_k_quantile(_f32(ref_logps), _f32(rewards), k=k)


@_kernel("(n),(n)->()", static=("k",))
def _top_k_quantile(l, r, *, k):
    quantile = (_midranks(l) - 0.5) / l.shape[0]
    _, top = jax.lax.top_k(r, k)
    return jnp.mean(quantile[top])


# ------------------------------------------------------------------ sample versions (C2)


def coverage_ks(data_ref_logps, sample_ref_logps):
    """Two-sample KS sup_t |F_data(t) − F_ref(t)| over the last axes [..., m], [..., n] → [...]
    (the empirical CDFs are compared at every pooled point, where the sup is attained)."""
    _check(data_ref_logps=data_ref_logps)
    _check(sample_ref_logps=sample_ref_logps)
    return _coverage_ks(_f32(data_ref_logps), _f32(sample_ref_logps))


@_kernel("(m),(n)->()")
def _coverage_ks(x, y):
    z = jnp.concatenate([x, y])
    fx = jnp.searchsorted(jnp.sort(x), z, side="right") / x.shape[0]
    fy = jnp.searchsorted(jnp.sort(y), z, side="right") / y.shape[0]
    return jnp.max(jnp.abs(fx - fy))


def _histogram(values, weights, lo, hi, bins):
    """Weighted histogram over `bins` equal bins of [lo, hi] (hi included in the last bin)."""
    width = jnp.where(hi > lo, hi - lo, 1.0)
    idx = jnp.clip(jnp.floor((values - lo) / width * bins).astype(jnp.int32), 0, bins - 1)
    return jnp.sum(jax.nn.one_hot(idx, bins) * weights[..., None], axis=-2)


def _check_bins(bins):  # static: it sets the histogram's shape
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")


def coverage_overlap(data_ref_logps, sample_ref_logps, *, bins=20):
    """Σ_b min(p_b, q_b): histogram overlap of the two samples of log π_ref over `bins` (static)
    equal bins of the pooled [min, max]. [..., m], [..., n] → [...]."""
    _check(data_ref_logps=data_ref_logps)
    _check(sample_ref_logps=sample_ref_logps)
    _check_bins(bins)
    return _coverage_overlap(_f32(data_ref_logps), _f32(sample_ref_logps), bins=bins)


@_kernel("(m),(n)->()", static=("bins",))
def _coverage_overlap(x, y, *, bins):
    z = jnp.concatenate([x, y])
    lo, hi = jnp.min(z), jnp.max(z)
    hx = _histogram(x, jnp.full(x.shape, 1.0 / x.shape[0]), lo, hi, bins)
    hy = _histogram(y, jnp.full(y.shape, 1.0 / y.shape[0]), lo, hi, bins)
    return jnp.sum(jnp.minimum(hx, hy))


def diagnose_samples(ref_logps, rewards, *, beta, top_k=None, data_ref_logps=None, bins=20):
    """Every sample measure of one prompt's (or a batch's) π_ref samples, as a dict of arrays.

    Keys: ess_ratio, kl_opt_ref, spearman, top_quantile (top_k default max(1, n // 10)) and,
    given the preference data's log π_ref values `data_ref_logps` [..., m], ks and overlap.
    """
    _check(beta, ref_logps=ref_logps, rewards=rewards)
    k = max(1, jnp.shape(rewards)[-1] // 10) if top_k is None else top_k
    out = {"ess_ratio": ess_ratio(rewards, beta=beta),
           "kl_opt_ref": kl_opt_ref(rewards, beta=beta),
           "spearman": spearman(ref_logps, rewards),
           "top_quantile": top_k_quantile(ref_logps, rewards, k=k)}
    if data_ref_logps is not None:
        out["ks"] = coverage_ks(data_ref_logps, ref_logps)
        out["overlap"] = coverage_overlap(data_ref_logps, ref_logps, bins=bins)
    return out


# ------------------------------------------------------------------ exact (categorical)


def ess_ratio_exact(ref_logp, rewards, *, beta):
    """exp(−D₂(π*‖π_ref)) = Z² / E_ref[exp(2r/β)], the n → ∞ limit of `ess_ratio`. [..., A]."""
    _check(beta, ref_logp=ref_logp, rewards=rewards)
    logp = jax.nn.log_softmax(_f32(ref_logp), -1)
    logw = _f32(rewards) / beta
    return jnp.exp(2 * logsumexp(logp + logw, -1) - logsumexp(logp + 2 * logw, -1))


def kl_opt_ref_exact(ref_logp, rewards, *, beta):
    """KL(π*_β‖π_ref) = Σ_a π*(a) r(a)/β − log Z, exact over all actions. [..., A] → [...]."""
    _check(beta, ref_logp=ref_logp, rewards=rewards)
    logp = jax.nn.log_softmax(_f32(ref_logp), -1)
    logw = _f32(rewards) / beta
    return jnp.sum(jax.nn.softmax(logp + logw, -1) * logw, -1) - logsumexp(logp + logw, -1)


def _mid_cdf(values, probs):
    """U(a) = P(X < x_a) + ½ P(X = x_a) for X taking value x_b with probability p_b. [A]."""
    less = jnp.sum(probs[None, :] * (values[None, :] < values[:, None]), -1)
    equal = jnp.sum(probs[None, :] * (values[None, :] == values[:, None]), -1)
    return less + 0.5 * equal


def spearman_exact(ref_logp, rewards):
    """Population Spearman ρ of (log π_ref(Y), r(Y)), Y ~ π_ref: π_ref-weighted Pearson of the
    mid-distribution transforms (O(A²)). [..., A] → [...]."""
    _check(ref_logp=ref_logp, rewards=rewards)
    return _spearman_exact(jax.nn.log_softmax(_f32(ref_logp), -1), _f32(rewards))


@_kernel("(a),(a)->()")
def _spearman_exact(logp, r):
    p = jnp.exp(logp)
    return _pearson(_mid_cdf(logp, p), _mid_cdf(r, p), p)


def top_quantile_exact(ref_logp, rewards, *, top_fraction):
    """π_ref-weighted mean of U = mid-CDF of log π_ref over the top `top_fraction` of π_ref's
    mass in decreasing reward order (ties: lower action first). [..., A] → [...]."""
    _check(ref_logp=ref_logp, rewards=rewards)
    if is_concrete(top_fraction) and not 0 < float(top_fraction) <= 1:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction!r}")
    fraction = jnp.broadcast_to(_f32(top_fraction), jnp.shape(rewards)[:-1])
    return _top_quantile_exact(jax.nn.log_softmax(_f32(ref_logp), -1), _f32(rewards), fraction)


@_kernel("(a),(a),()->()")
def _top_quantile_exact(logp, r, fraction):
    p = jnp.exp(logp)
    order = jnp.argsort(-r, stable=True)
    before = jnp.cumsum(p[order]) - p[order]
    take = jnp.clip(fraction - before, 0.0, p[order])
    return jnp.sum(take * _mid_cdf(logp, p)[order]) / jnp.sum(take)


def _data_law(ref_logp, data_probs):
    logp = jax.nn.log_softmax(_f32(ref_logp), -1)
    q = _f32(data_probs)
    return logp, jnp.exp(logp), q / jnp.sum(q, -1, keepdims=True)


def coverage_ks_exact(ref_logp, data_probs):
    """sup_t |P_data(L ≤ t) − P_ref(L ≤ t)| for L = log π_ref(Y), Y ~ data_probs vs Y ~ π_ref
    (the sup is attained at some l_a). [..., A] → [...]."""
    _check(ref_logp=ref_logp, data_probs=data_probs)
    return _coverage_ks_exact(*_data_law(ref_logp, data_probs))


@_kernel("(a),(a),(a)->()")
def _coverage_ks_exact(logp, p, q):
    below = logp[None, :] <= logp[:, None]
    return jnp.max(jnp.abs(jnp.sum(below * q, -1) - jnp.sum(below * p, -1)))


def coverage_overlap_exact(ref_logp, data_probs, *, bins=20):
    """Σ_b min(P_data(L ∈ b), P_ref(L ∈ b)) over `bins` equal bins of [min, max] of l_a over
    the actions that either distribution puts mass on. [..., A] → [...]."""
    _check(ref_logp=ref_logp, data_probs=data_probs)
    _check_bins(bins)
    return _coverage_overlap_exact(*_data_law(ref_logp, data_probs), bins=bins)


@_kernel("(a),(a),(a)->()", static=("bins",))
def _coverage_overlap_exact(logp, p, q, *, bins):
    support = (p > 0) | (q > 0)
    lo = jnp.min(jnp.where(support, logp, jnp.inf))
    hi = jnp.max(jnp.where(support, logp, -jnp.inf))
    finite = jnp.where(support, logp, lo)
    return jnp.sum(jnp.minimum(_histogram(finite, p, lo, hi, bins),
                               _histogram(finite, q, lo, hi, bins)))


def diagnose_categorical(ref_logp, rewards, *, beta, top_fraction=0.1, data_probs=None, bins=20):
    """Every exact measure (the keys of `diagnose_samples`) of a categorical π_ref, plus
    ref_peak_mass = π_ref(argmax r) (the largest-reward action's mass, summed over ties)."""
    _check(beta, ref_logp=ref_logp, rewards=rewards)
    logp = jax.nn.log_softmax(_f32(ref_logp), -1)
    r = _f32(rewards)
    out = {"ess_ratio": ess_ratio_exact(logp, r, beta=beta),
           "kl_opt_ref": kl_opt_ref_exact(logp, r, beta=beta),
           "spearman": spearman_exact(logp, r),
           "top_quantile": top_quantile_exact(logp, r, top_fraction=top_fraction),
           "ref_peak_mass": jnp.sum(jnp.exp(logp) * (r == jnp.max(r, -1, keepdims=True)), -1)}
    if data_probs is not None:
        out["ks"] = coverage_ks_exact(logp, data_probs)
        out["overlap"] = coverage_overlap_exact(logp, data_probs, bins=bins)
    return out


# ------------------------------------------------------------------ recommendation


class Recommendation(NamedTuple):
    """PAPER.md §1's advice for one geometry. `method_class` is "onpolicy_negative" (sample from
    the current policy and use a loss with a negative gradient) or "offline_adequate" (offline
    / supervised methods suffice); `advice` and `reasons` are sentences; `numbers` the inputs."""

    method_class: str
    on_policy: bool
    negative_gradient: bool
    off_policy_correction: bool
    advice: tuple[str, ...]
    reasons: tuple[str, ...]
    numbers: dict


def recommend(measures, *, planned_reuse=None, aligned_ess=ALIGNED_ESS, covered_ks=COVERED_KS):
    """Advice from the measures of `diagnose_samples` / `diagnose_categorical` (concrete scalars):

    - misaligned (ESS/n < `aligned_ess`: π* lies where π_ref rarely samples) → on-policy
      sampling + a negative gradient (on-policy DPO/IPO, REINFORCE/PPO);
    - aligned and covered (KS ≤ `covered_ks`, or no data given) → offline / supervised methods
      are adequate, saving the on-policy sampling and reward queries during training;
    - aligned but not covered → on-policy + negative gradient: a reward model or data that does
      not cover π_ref is unreliable exactly where the policy will sample;
    - `planned_reuse` T > LARGE_REUSE gradient steps per sampled batch → only with an off-policy
      correction (PPO's clipped ratio); Best-of-N / filtered BC degrade with large T.
    """
    try:  # concrete scalars only: this is host-side logic, not traced
        numbers = {k: float(v) for k, v in measures.items()}
    except TypeError as e:
        raise ValueError(f"measures must map names to scalars (one geometry): {e}") from None
    if "ess_ratio" not in numbers:
        raise ValueError(f"measures needs 'ess_ratio' (from diagnose_samples), got keys "
                         f"{sorted(numbers)}")
    ess, ks = numbers["ess_ratio"], numbers.get("ks")
    reasons = [f"ESS/n = {ess:.3g} {'≥' if ess >= aligned_ess else '<'} {aligned_ess:g}: π*_β "
               + ("overlaps π_ref (C1 aligned)" if ess >= aligned_ess
                  else "sits where π_ref rarely samples (C1 misaligned)")]
    for key, text in (("kl_opt_ref", "KL(π*‖π_ref) = {:.3g} nats"),
                      ("spearman", "Spearman(log π_ref, r) = {:+.2f}"),
                      ("top_quantile", "the top-reward samples sit at quantile {:.2f} of "
                                       "π_ref's log-likelihoods")):
        if key in numbers:
            reasons.append(text.format(numbers[key]))
    aligned = ess >= aligned_ess
    covered = ks is None or ks <= covered_ks
    if ks is not None:
        reasons.append(f"KS(data, π_ref) = {ks:.2f} {'≤' if covered else '>'} {covered_ks:g}: "
                       + ("the data covers π_ref (C2)" if covered else "the data does not "
                          "cover π_ref (C2 fails)"))
    if aligned and covered:
        cls, advice = "offline_adequate", [
            "offline / supervised methods (offline DPO/IPO, Best-of-N, Pref-FT) are adequate: "
            "the reward's peak is already where π_ref samples, so on-policy sampling would "
            "mostly add cost (sampling and reward queries during training)"]
    else:
        cls, advice = "onpolicy_negative", [
            "sample on-policy and use a loss with a negative gradient (on-policy DPO/IPO, "
            "REINFORCE/RLOO, PPO)" + ("" if aligned else ": mode-seeking moves mass to a peak "
                                      "π_ref barely samples")]
    correction = planned_reuse is not None and planned_reuse > LARGE_REUSE
    if correction:
        advice.append(f"reuse T = {planned_reuse} > {LARGE_REUSE} steps per batch only with an "
                      "off-policy correction (PPO's clipped ratio); Best-of-N degrades")
    on = cls == "onpolicy_negative"
    return Recommendation(cls, on, on, correction, tuple(advice), tuple(reasons), numbers)
