"""Plain NumPy (float64) re-implementations of modeseek's losses, written from the formulas in
the docstrings and papers, with explicit Python loops where that is the clearest statement.

Nothing here imports modeseek: these are the independent references the tests compare against.
"""

from __future__ import annotations

import numpy as np


def log_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


# ---------------------------------------------------------------- log-probs


def token_logprobs(logits, tokens, mask=None):
    """Loop: out[b, t] = log softmax(logits[b, t-1])[tokens[b, t]], out[b, 0] = 0."""
    logits = np.asarray(logits, np.float64)
    tokens = np.asarray(tokens)
    B, L = tokens.shape
    out = np.zeros((B, L))
    for b in range(B):
        for t in range(1, L):
            if mask is not None and not mask[b][t]:
                continue
            out[b, t] = log_softmax(logits[b, t - 1])[tokens[b, t]]
    return out


def sequence_logprobs(logits, tokens, mask):
    return token_logprobs(logits, tokens, mask).sum(-1)


def masked_mean(values, where=None, axis=None):
    values = np.asarray(values, np.float64)
    if where is None:
        return values.mean(axis=axis)
    where = np.broadcast_to(np.asarray(where, bool), values.shape)
    count = where.sum(axis=axis)
    return np.where(where, values, 0.0).sum(axis=axis) / np.maximum(count, 1)


# ---------------------------------------------------------------- contrastive


def margin(pc, pr, rc, rr):
    return (np.float64(pc) - rc) - (np.float64(pr) - rr)


def dpo(pc, pr, rc, rr, beta, eps=0.0):
    z = beta * margin(pc, pr, rc, rr)
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def robust_dpo(pc, pr, rc, rr, beta, eps):
    z = beta * margin(pc, pr, rc, rr)
    return ((1 - eps) * -log_sigmoid(z) - eps * -log_sigmoid(-z)) / (1 - 2 * eps)


def ipo(pc, pr, rc, rr, tau):
    return (margin(pc, pr, rc, rr) - 1.0 / (2.0 * tau)) ** 2


def slic(pc, pr, rc, rr, beta, delta=1.0):
    return np.maximum(0.0, delta - beta * margin(pc, pr, rc, rr))


def simpo(pc, pr, nc, nr, beta, gamma=0.5):
    nc = np.maximum(np.float64(nc), 1.0)
    nr = np.maximum(np.float64(nr), 1.0)
    return -log_sigmoid(beta * (np.float64(pc) / nc - np.float64(pr) / nr) - gamma)


def bradley_terry(sw, sl, eps=0.0):
    d = np.float64(sw) - sl
    return -(1 - eps) * log_sigmoid(d) - eps * log_sigmoid(-d)


# ---------------------------------------------------------------- likelihood


def _order(rewards_row, valid_row):
    """Valid indices sorted best-first; ties keep original order."""
    idx = [i for i in range(len(rewards_row)) if valid_row[i]]
    return sorted(idx, key=lambda i: -rewards_row[i])  # Python sort is stable


def best_of_n_row(logps, rewards, valid=None, top_k=1, negative=None, coef=1.0, ref=None,
                  clip=None):
    """One prompt. −mean_{top-k} log π + c · mean_{negatives} (log π [− log π_ref], floored)."""
    n = len(logps)
    valid = [True] * n if valid is None else list(valid)
    order = _order(rewards, valid)
    if not order:
        return 0.0
    chosen = order[:top_k]
    loss = -np.mean([logps[i] for i in chosen])
    if negative is None:
        return loss
    # Negatives: strictly worse than the best and not among the cloned top-k.
    best = max(rewards[i] for i in order)
    worse = [i for i in order if rewards[i] < best and i not in chosen]
    if negative == "worst":
        negs = [order[-1]] if order[-1] in worse else []
    else:
        negs = worse
    if not negs:
        return loss
    vals = []
    for i in negs:
        v = logps[i] - (0.0 if ref is None else ref[i])
        if clip is not None:
            v = max(v, -clip)
        vals.append(v)
    return loss + coef * np.mean(vals)


def zscore(rewards, valid=None, eps=1e-6):
    r = np.asarray(rewards, np.float64)
    valid = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros_like(r)
    for idx in np.ndindex(r.shape[:-1]):
        v = r[idx][valid[idx]]
        if v.size:
            out[idx][valid[idx]] = (v - v.mean()) / (v.std() + eps)
    return out


def rwr_row(logps, rewards, beta, normalize="none", clip=None, valid=None, eps=1e-6):
    logps = np.asarray(logps, np.float64)
    r = np.asarray(rewards, np.float64)
    valid = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
    if not valid.any():
        return 0.0
    rv, lv = r[valid], logps[valid]
    if normalize == "zscore":
        rv = (rv - rv.mean()) / (rv.std() + eps)
    w = np.exp(rv / beta)
    if clip is not None:
        w = np.minimum(w, clip)
    return -np.mean(w * lv)


# ---------------------------------------------------------------- policy gradient


def reinforce(logps, adv):
    return -np.float64(adv) * logps


def ppo_clip(logps, old, adv, eps=0.2):
    ratio = np.exp(np.float64(logps) - old)
    unclipped = ratio * adv
    clipped = np.clip(ratio, 1 - eps, 1 + eps) * adv
    return -np.minimum(unclipped, clipped)  # the pessimistic surrogate, negated


def clipped_value(v, v_old, ret, eps=0.2):
    v_clip = v_old + np.clip(v - v_old, -eps, eps)
    return 0.5 * np.maximum((v - ret) ** 2, (v_clip - ret) ** 2)


def kl_k1(logp, logq):
    return np.float64(logp) - logq


def kl_k2(logp, logq):
    return 0.5 * (np.float64(logp) - logq) ** 2


def kl_k3(logp, logq):
    r = np.exp(np.float64(logq) - logp)  # π_ref / π
    return (r - 1.0) - np.log(r)


# ---------------------------------------------------------------- advantages


def mean_baseline(rewards, valid=None):
    r = np.asarray(rewards, np.float64)
    valid = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros_like(r)
    for idx in np.ndindex(r.shape[:-1]):
        v = r[idx][valid[idx]]
        if v.size:
            out[idx][valid[idx]] = v - v.mean()
    return out


def rloo(rewards, valid=None):
    """Explicit leave-one-out loop: A_i = r_i − mean_{j≠i, j valid} r_j."""
    r = np.asarray(rewards, np.float64)
    valid = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros_like(r)
    for idx in np.ndindex(r.shape[:-1]):
        ids = [i for i in range(r.shape[-1]) if valid[idx][i]]
        if len(ids) < 2:
            continue
        for i in ids:
            others = [r[idx][j] for j in ids if j != i]
            out[idx][i] = r[idx][i] - np.mean(others)
    return out


def gae(rewards, values, mask, gamma, lam):
    """Python loop over each row's real (unpadded) steps; the episode ends at the last one."""
    rewards = np.asarray(rewards, np.float64)
    values = np.asarray(values, np.float64)
    B, T = rewards.shape
    adv = np.zeros((B, T))
    for b in range(B):
        length = int(np.sum(mask[b]))
        last = 0.0
        for t in reversed(range(length)):
            next_v = values[b, t + 1] if t + 1 < length else 0.0
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            last = delta + (gamma * lam * last if t + 1 < length else 0.0)
            adv[b, t] = last
    ret = np.where(np.asarray(mask, bool), adv + values, 0.0)
    return adv, ret


# ---------------------------------------------------------------- pairs


def ranked_pairs(rewards_row, threshold=0.0, valid=None):
    """List of (winner, loser) index pairs of one prompt."""
    n = len(rewards_row)
    valid = [True] * n if valid is None else list(valid)
    return [(i, j) for i in range(n) for j in range(n)
            if valid[i] and valid[j] and rewards_row[i] - rewards_row[j] > threshold]


# ---------------------------------------------------------------- objectives ([P, N] batches)


def _valid(batch):
    m = batch.get("mask")
    return np.ones(np.shape(batch["rewards"]), bool) if m is None else np.asarray(m, bool)


def contrastive_objective(pair_loss, logps, batch, threshold=0.0):
    """Mean of pair_loss(pc, pr, rc, rr) over all ranked pairs of the batch (0 if none)."""
    logps = np.asarray(logps, np.float64)
    ref = np.asarray(batch["ref_logps"], np.float64)
    valid = _valid(batch)
    losses = []
    for p in range(logps.shape[0]):
        for i, j in ranked_pairs(batch["rewards"][p], threshold, valid[p]):
            losses.append(pair_loss(logps[p, i], logps[p, j], ref[p, i], ref[p, j]))
    return float(np.mean(losses)) if losses else 0.0


def pref_ft_objective(logps, batch, threshold=0.0):
    logps = np.asarray(logps, np.float64)
    valid = _valid(batch)
    terms = [-logps[p, i] for p in range(logps.shape[0])
             for i, _ in ranked_pairs(batch["rewards"][p], threshold, valid[p])]
    return float(np.mean(terms)) if terms else 0.0


def best_of_n_objective(logps, batch, top_k=1, negative=None, coef=1.0, clip=None):
    valid = _valid(batch)
    rows = [best_of_n_row(logps[p], batch["rewards"][p], valid[p], top_k, negative, coef,
                          batch["ref_logps"][p], clip) for p in range(len(logps))]
    return float(np.mean(rows))


def rwr_objective(logps, batch, beta, clip=None):
    valid = _valid(batch)
    return float(np.mean([rwr_row(logps[p], batch["rewards"][p], beta, "zscore", clip, valid[p])
                          for p in range(len(logps))]))


def reinforce_objective(logps, batch, baseline="zscore", nonnegative=False):
    valid = _valid(batch)
    r = batch["rewards"]
    a = {"zscore": zscore, "mean": mean_baseline, "rloo": rloo}[baseline](r, valid)
    if nonnegative:
        for p in range(a.shape[0]):
            if valid[p].any():
                a[p][valid[p]] -= a[p][valid[p]].min()
    per = reinforce(np.asarray(logps, np.float64), a)
    return float(per[valid].mean())


def ppo_objective(logps, batch, clip_eps=0.2, kl_coef=0.0):
    valid = _valid(batch)
    shaped = np.asarray(batch["rewards"], np.float64) - kl_coef * (
        np.asarray(batch["old_logps"], np.float64) - batch["ref_logps"])
    a = zscore(shaped, valid)
    per = ppo_clip(logps, batch["old_logps"], a, clip_eps)
    return float(per[valid].mean())
