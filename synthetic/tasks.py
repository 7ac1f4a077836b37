"""The synthetic tasks' data: sources, gold rewards and preference sets (PAPER.md §4–§5).

Token-sequence bandit (§4, "combinatorial response space"):
  vocabulary 100, prompt = 1 uniform token, response = 9 tokens, no EOS. π_ref per token is the
  100-bin distribution of tanh(c), c ~ Cauchy(−0.7, 0.4), exact bin masses
  π_ref(k) = F(atanh(e_{k+1})) − F(atanh(e_k)), e_k = −1 + 0.02k. Reward = mean over the 9
  response tokens of the bump exp(−((a − peak)/10)²); peak 70 (R1-like, low π_ref) or 20
  (R2-like, near π_ref's mode). (The authors average over all 10 tokens, prompt included; the
  prompt token is outside the policy's control, so it only adds noise and is left out here.)

Synthetic language for the length tasks (§5):
  vocabulary PAD=0, EOS=1, BOS=2, content tokens 3…V−1. Prompt = [BOS, c1, c2, c3] with c_i
  uniform. Response = a first-order Markov chain over content tokens (each token has 3 random
  successors with Dirichlet(1) probabilities; the first token follows c3), of length L then EOS.
  L ~ p(L) ∝ L^{k−1} exp(−L/θ) on 1…T−1 (T = max_new_tokens), k = 4, θ = mode/(k − 1): a broad
  unimodal distribution with its mode well inside the range.

Lengths: `response_lengths` = response tokens before EOS (EOS itself not counted); a response
without EOS in T slots has length T. Gold rewards: Min/Skew −length, Mode −|length − mode|.

Preference sets (2 reference samples per prompt, ties dropped and counted):
  min   the shorter response is preferred;
  mode  the one closer to the data's mode (argmax of the length histogram smoothed over ±2);
  skew  as min, after truncating every completion to min(L, cap), EOS re-appended, with cap =
        π_ref's median length (`median_length` of the reference samples): the data covers the
        lower half of π_ref's lengths exactly and never shows a response longer than the cap.

Proxy-RM checks on π_ref (the coverage condition is about π_ref, not the preference data):
  `pair_accuracy(scores [K, 2], gold [K, 2])` = over pairs with gold_0 ≠ gold_1, the fraction
  whose score order agrees with the gold order (score ties count ½); `score_by_length` bins RM
  scores by response length, `monotone_decreasing` says whether those bin means fall with length.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

PAD, EOS, BOS = 0, 1, 2
LENGTH_TASKS = ("min", "mode", "skew")


# ----------------------------------------------------------------------------- token bandit


def cauchy_histogram(num_bins: int = 100, loc: float = -0.7, scale: float = 0.4) -> np.ndarray:
    """Exact mass of tanh(Cauchy(loc, scale)) in `num_bins` equal bins over [−1, 1]."""
    edges = np.linspace(-1.0, 1.0, num_bins + 1)
    with np.errstate(divide="ignore"):
        z = np.arctanh(edges)
    cdf = 0.5 + np.arctan((z - loc) / scale) / math.pi
    return np.diff(cdf)


def bump_reward(tokens_BxT, mask_BxT, peak, width: float = 10.0):
    """Mean over valid response tokens of exp(−((a − peak)/width)²): [B, T] → [B]."""
    r = jnp.exp(-jnp.square((tokens_BxT.astype(jnp.float32) - peak) / width))
    m = mask_BxT.astype(jnp.float32)
    return jnp.sum(r * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)


def token_prompts(vocab_size: int = 100) -> np.ndarray:
    """Every 1-token prompt, [V, 1]."""
    return np.arange(vocab_size, dtype=np.int32)[:, None]


def token_sft_data(rng: np.random.Generator, num: int, probs: np.ndarray, response_len: int):
    """(tokens [num, 1 + T], loss_mask) with the prompt uniform and responses i.i.d. π_ref."""
    v = len(probs)
    prompts = rng.integers(0, v, (num, 1))
    responses = rng.choice(v, size=(num, response_len), p=probs / probs.sum())
    tokens = np.concatenate([prompts, responses], 1).astype(np.int32)
    mask = np.concatenate([np.zeros((num, 1)), np.ones((num, response_len))], 1)
    return tokens, mask.astype(np.int32)


# ----------------------------------------------------------------------------- language


def length_pmf(max_new_tokens: int, mode: float, shape: float = 4.0) -> np.ndarray:
    """p(L) for L = 0…T−1 (p(0) = 0) ∝ L^{k−1} e^{−L/θ}, θ = mode/(k−1)."""
    lengths = np.arange(max_new_tokens, dtype=np.float64)
    theta = mode / (shape - 1.0)
    logp = np.where(lengths > 0, (shape - 1.0) * np.log(np.maximum(lengths, 1)) - lengths / theta,
                    -np.inf)
    p = np.exp(logp - logp.max())
    return p / p.sum()


def transition_matrix(vocab_size: int, seed: int = 0, successors: int = 3) -> np.ndarray:
    """[V, V] Markov transitions among content tokens (3…V−1); rows of specials are unused."""
    rng = np.random.default_rng(seed)
    trans = np.zeros((vocab_size, vocab_size))
    content = np.arange(3, vocab_size)
    for tok in content:
        nxt = rng.choice(content, successors, replace=False)
        trans[tok, nxt] = rng.dirichlet(np.ones(successors))
    return trans


def language_prompts(rng: np.random.Generator, num: int, vocab_size: int,
                     prompt_len: int = 4) -> np.ndarray:
    content = rng.integers(3, vocab_size, (num, prompt_len - 1))
    return np.concatenate([np.full((num, 1), BOS), content], 1).astype(np.int32)


def language_responses(rng: np.random.Generator, prompts: np.ndarray, trans: np.ndarray,
                       pmf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(responses [K, T] with EOS then PAD, mask [K, T] with 1 up to and including EOS)."""
    num, max_new = len(prompts), len(pmf)
    lengths = rng.choice(max_new, size=num, p=pmf)
    out = np.full((num, max_new), PAD, np.int32)
    cum = np.cumsum(trans, 1)
    tok = prompts[:, -1].copy()
    for t in range(max_new):
        u = rng.random(num)
        tok = np.minimum((cum[tok] < u[:, None]).sum(1), trans.shape[0] - 1)
        out[:, t] = np.where(t < lengths, tok, out[:, t])
    out[np.arange(num), lengths] = EOS
    mask = (np.arange(max_new)[None] <= lengths[:, None]).astype(np.int32)
    return out, mask


def response_lengths(tokens_BxT, mask_BxT, eos_id=EOS):
    """Tokens before EOS; T when no EOS was emitted. Works on numpy and jax arrays."""
    xp = np if isinstance(tokens_BxT, np.ndarray) else jnp
    valid = mask_BxT.astype(bool)
    has_eos = xp.any((tokens_BxT == eos_id) & valid, -1)
    return xp.sum(valid, -1) - has_eos.astype(xp.int32)


def gold_reward(lengths, task: str, mode: float):
    """Min/Skew: −length; Mode: −|length − mode|."""
    lengths = lengths.astype(np.float32)
    return -abs(lengths - mode) if task == "mode" else -lengths


def data_mode(lengths: np.ndarray, window: int = 2) -> int:
    """Mode of a length sample: argmax of its histogram smoothed over ±window."""
    hist = np.bincount(lengths, minlength=int(lengths.max()) + 1).astype(np.float64)
    smooth = np.convolve(hist, np.ones(2 * window + 1), mode="same")
    return int(np.argmax(smooth))


def truncate(responses: np.ndarray, mask: np.ndarray, new_lengths: np.ndarray, eos_id=EOS):
    """Cut responses to `new_lengths` tokens (if shorter than now) and re-append EOS."""
    lengths = response_lengths(responses, mask, eos_id)
    keep = np.minimum(lengths, new_lengths)
    t = np.arange(responses.shape[1])[None]
    out = np.where(t < keep[:, None], responses, PAD).astype(np.int32)
    out[np.arange(len(out)), np.minimum(keep, responses.shape[1] - 1)] = eos_id
    return out, (t <= keep[:, None]).astype(np.int32)


def median_length(lengths) -> int:
    """π_ref's median response length (the lower median for an even count): the Skew cap."""
    lengths = np.sort(np.asarray(lengths).reshape(-1))
    if lengths.size == 0:
        raise ValueError("median_length: no lengths given")
    return int(lengths[(lengths.size - 1) // 2])


def pair_accuracy(scores_Kx2, gold_Kx2) -> tuple[float, int]:
    """(accuracy, pairs judged): over pairs whose gold differs, the fraction where the score
    prefers the gold-preferred response; a score tie counts ½."""
    s, g = np.asarray(scores_Kx2, np.float64), np.asarray(gold_Kx2, np.float64)
    if s.shape != g.shape or s.ndim != 2 or s.shape[1] != 2:
        raise ValueError(f"pair_accuracy: scores {s.shape} and gold {g.shape} must both be [K, 2]")
    keep = g[:, 0] != g[:, 1]
    ds, dg = (s[:, 0] - s[:, 1])[keep], (g[:, 0] - g[:, 1])[keep]
    if ds.size == 0:
        return float("nan"), 0
    hits = np.sum(np.sign(ds) == np.sign(dg)) + 0.5 * np.sum(ds == 0)
    return float(hits / ds.size), int(ds.size)


def score_by_length(lengths, scores, max_length: int):
    """(mean score [max_length + 1], count [max_length + 1]) per response length 0…max_length;
    lengths with no sample have mean NaN."""
    lengths, scores = np.asarray(lengths).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
    count = np.bincount(lengths, minlength=max_length + 1)[:max_length + 1]
    total = np.bincount(lengths, weights=scores, minlength=max_length + 1)[:max_length + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def monotone_decreasing(mean_by_length, count, min_count: int = 5):
    """(is monotone, rises, bins): over lengths with ≥ min_count samples, in order, whether each
    bin's mean score is ≤ the previous one's; `rises` lists the lengths where it went up."""
    keep = np.nonzero(np.asarray(count) >= min_count)[0]
    m = np.asarray(mean_by_length)[keep]
    rises = [int(keep[i + 1]) for i in range(len(keep) - 1) if m[i + 1] > m[i]]
    return not rises, rises, len(keep)


def preference_pairs(rng: np.random.Generator, task: str, prompts: np.ndarray,
                     responses_Kx2xT: np.ndarray, mask_Kx2xT: np.ndarray, *, skew_cap: int = 12):
    """Label 2 samples per prompt for a length task (`skew_cap`: the Skew truncation length).

    Returns a dict of numpy arrays: prompts [Q, P], chosen/rejected [Q, T] and their masks,
    the chosen/rejected lengths, `mode` (the data's mode length) and `dropped_ties`.
    """
    if task not in LENGTH_TASKS:
        raise ValueError(f"task must be one of {LENGTH_TASKS}, got {task!r}")
    k, _, t = responses_Kx2xT.shape
    resp, mask = responses_Kx2xT.reshape(2 * k, t), mask_Kx2xT.reshape(2 * k, t)
    if task == "skew":
        if skew_cap < 1:
            raise ValueError(f"skew_cap must be >= 1, got {skew_cap}")
        resp, mask = truncate(resp, mask, np.full(2 * k, skew_cap))
    lengths = response_lengths(resp, mask)
    mode = data_mode(lengths)
    gold = gold_reward(lengths, task, mode).reshape(k, 2)
    keep = gold[:, 0] != gold[:, 1]
    first_wins = gold[:, 0] > gold[:, 1]
    resp, mask, lengths = (x.reshape(k, 2, *x.shape[1:]) for x in (resp, mask, lengths))
    w, lo = np.where(first_wins, 0, 1), np.where(first_wins, 1, 0)
    idx = np.arange(k)
    out = dict(prompts=prompts, chosen=resp[idx, w], chosen_mask=mask[idx, w],
               rejected=resp[idx, lo], rejected_mask=mask[idx, lo],
               chosen_length=lengths[idx, w], rejected_length=lengths[idx, lo])
    out = {name: v[keep] for name, v in out.items()}
    out["mode"] = mode
    out["dropped_ties"] = int((~keep).sum())
    return out


def bump_pairs(prompts, responses_Kx2xT, peak: float):
    """Label 2 samples per prompt by the bump reward (the token bandit's offline set)."""
    k, _, t = responses_Kx2xT.shape
    mask = np.ones((k, 2, t), np.int32)
    r = np.asarray(bump_reward(jnp.asarray(responses_Kx2xT), jnp.asarray(mask), peak))
    keep = r[:, 0] != r[:, 1]
    w = np.where(r[:, 0] > r[:, 1], 0, 1)
    idx = np.arange(k)
    out = dict(prompts=prompts, chosen=responses_Kx2xT[idx, w], chosen_mask=mask[:, 0],
               rejected=responses_Kx2xT[idx, 1 - w], rejected_mask=mask[:, 1])
    out = {name: v[keep] for name, v in out.items()}
    out["dropped_ties"] = int((~keep).sum())
    return out
