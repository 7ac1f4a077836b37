"""Infinite-data optima of the offline weighted maximum-likelihood objectives (issue 9, item 4).

Each offline objective without a negative gradient is −E[Σ_i w_i · log π(y_i)] with N samples
y_1..N ~ π_ref per prompt and weights w_i ≥ 0 that depend only on the samples' rewards. Over
all distributions π (the tabular policy; the MLP can represent any prompt-independent one), the
optimum is the normalised expected weight per action (Gibbs' inequality):

    π_w(a) ∝ E[Σ_i w_i 1{y_i = a}] = N · π_ref(a) · E[w_1 | y_1 = a].

- Pref-FT (clone the winner of every ranked pair, r_i − r_j > τ): w_i = #{j: r_i − r_j > τ},
  so π(a) ∝ π_ref(a) · P_{y∼π_ref}(r(a) − r(y) > τ). (The code divides by the minibatch's pair
  count; this is the population objective, where that count is replaced by its expectation.)
- offline Best-of-N (clone the best of N; ties broken uniformly, as a stable sort of iid samples
  does): π(a) = π_ref(a)/π_ref(C_a) · [F≤(r(a))^N − F<(r(a))^N], C_a = {b : r(b) = r(a)},
  F≤/F< the CDF of r(y) under π_ref at/just below r(a).
- RWR (per-prompt z-scored rewards, w = min(exp(z/β), clip)): E[w_1 | y_1 = a] is an expectation
  over the other N − 1 samples; it is enumerated exactly when A^(N−1) is small and estimated by
  Monte Carlo otherwise (`draws` sets of N − 1 samples, shared by all actions; the standard
  error of the resulting expected reward is returned).

Rewards are compared in float32, as the training code does, so ties are the code's ties.
"""

from __future__ import annotations

import itertools

import numpy as np


def _f32(rewards):
    return np.asarray(rewards, np.float32).astype(np.float64)


def pref_ft_optimum(ref_probs, rewards, *, threshold=0.0):
    """π(a) ∝ π_ref(a) · P(r(a) − r(y) > threshold), y ∼ π_ref."""
    p, r = np.asarray(ref_probs, np.float64), _f32(rewards)
    beats = ((r[:, None] - r[None, :]).astype(np.float32) > threshold) @ p
    w = p * beats
    return w / w.sum()


def best_of_n_optimum(ref_probs, rewards, num_samples):
    """The distribution of the best of N iid π_ref samples (uniform among reward ties)."""
    p, r = np.asarray(ref_probs, np.float64), _f32(rewards)
    le = (r[None, :] <= r[:, None]) @ p
    lt = (r[None, :] < r[:, None]) @ p
    tie_mass = (r[None, :] == r[:, None]) @ p
    return p / tie_mass * (le ** num_samples - lt ** num_samples)


def _rwr_weight(r_self, r_others, beta, weight_clip, eps=1e-6):
    """w_1 [A, K] for sample 1 with reward r_self [A] among the other samples r_others [K, N−1]
    (the z-score of modeseek.zscore_advantages: population std, + eps)."""
    shape = (len(r_self),) + r_others.shape
    r_all = np.concatenate([np.broadcast_to(r_self[:, None, None], shape[:2] + (1,)),
                            np.broadcast_to(r_others[None], shape)], -1)
    mean = r_all.mean(-1)
    std = np.sqrt(np.square(r_all - mean[..., None]).mean(-1))
    w = np.exp((r_self[:, None] - mean) / (std + eps) / beta)
    return np.minimum(w, weight_clip) if weight_clip is not None else w


def rwr_optimum(ref_probs, rewards, num_samples, *, beta=1.0, weight_clip=None,
                draws=20_000, seed=0, exact_limit=20_000):
    """(π, standard error of E_π[r]) for z-scored RWR; exact (SE 0) when A^(N−1) ≤ exact_limit."""
    p, r = np.asarray(ref_probs, np.float64), _f32(rewards)
    a, k = len(p), num_samples - 1
    if a ** k <= exact_limit:
        tuples = np.array(list(itertools.product(range(a), repeat=k)), np.int64).reshape(-1, k)
        probs = np.prod(p[tuples], axis=1)
        w = _rwr_weight(r, r[tuples], beta, weight_clip)
        pi = p * (w @ probs)
        return pi / pi.sum(), 0.0
    rng = np.random.default_rng(seed)
    others = rng.choice(a, size=(draws, k), p=p / p.sum())
    pis = []
    for chunk in np.array_split(np.arange(draws), 20):  # batches of draws → an SE estimate
        w = _rwr_weight(r, r[others[chunk]], beta, weight_clip)
        pis.append(p * w.mean(1))
    pis = np.array(pis)
    pi = pis.mean(0)
    values = (pis * r).sum(1) / pis.sum(1)
    return pi / pi.sum(), float(values.std(ddof=1) / np.sqrt(len(values)))


def ceilings(ref_probs, rewards, num_samples, hparams):
    """{algorithm: (optimum π [A], expected reward under it, its standard error)}."""
    r = np.asarray(rewards, np.float64)
    pf = pref_ft_optimum(ref_probs, rewards, threshold=hparams.get("threshold", 0.0))
    bon = best_of_n_optimum(ref_probs, rewards, num_samples)
    rwr, se = rwr_optimum(ref_probs, rewards, num_samples, beta=hparams["rwr_beta"],
                          weight_clip=hparams.get("weight_clip"))
    return {"pref_ft": (pf, float(pf @ r), 0.0), "offline_bofn": (bon, float(bon @ r), 0.0),
            "offline_rwr": (rwr, float(rwr @ r), se)}
