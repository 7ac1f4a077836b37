"""The geometry diagnostic (modeseek.diagnose, issue 14) for the length tasks: where the gold
reward's peak sits relative to π_ref (C1) and whether the preference data covers π_ref (C2),
measured on fresh π_ref samples before any training, beside the study's measured ranking.

- samples: the study's fresh π_ref pairs (`study.reference_pairs`, both responses of each
  prompt pooled: the length rewards ignore the prompt), with log π_ref(y|x) = Σ over response
  tokens of log π_ref (the reference's own forward pass);
- rewards: the task's gold reward (Min/Skew −length, Mode −|length − mode|), min–max scaled to
  [0, 1] over those samples, with β = BETA = 0.1 — the bandit's convention (r ∈ [0, 1],
  π* β = 0.1), so ESS/n means the same thing at both tiers;
- data: log π_ref of the offline preference set's chosen and rejected responses (rows cycled
  to the set's fixed size count again; the KS and overlap are distances between the laws).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import modeseek
from modeseek import decoder as dec
from synthetic import tasks

BETA = 0.1


def sequence_ref_logps(cfg, ref, prompts, responses, response_mask, batch=256):
    """log π_ref(y|x) summed over response tokens: prompts [K, P], responses and their mask
    [K, T] → [K] float64."""
    out = [_sequence_logps(ref, jnp.asarray(prompts[i:i + batch]),
                           jnp.asarray(responses[i:i + batch]),
                           jnp.asarray(response_mask[i:i + batch]), cfg=cfg)
           for i in range(0, len(prompts), batch)]
    return np.concatenate([np.asarray(x, np.float64) for x in out])


@functools.partial(jax.jit, static_argnames="cfg")
def _sequence_logps(ref, prompts, responses, response_mask, *, cfg):
    seqs = jnp.concatenate([prompts, responses], 1)
    resp = response_mask.astype(bool)
    attn = jnp.concatenate([jnp.ones(prompts.shape, bool), resp], 1)
    loss = jnp.concatenate([jnp.zeros(prompts.shape, bool), resp], 1)
    logits = dec.forward(ref, cfg, seqs, attention_mask_BxL=attn)
    return modeseek.sequence_logprobs(logits, seqs, loss)


def task_diagnostic(cfg, ref, pairs, offline, task, mode, prompt_len):
    """{diagnose_<measure>: float, diagnose_recommendation: class} for one length task.

    pairs: (full sequences [K, 2, S], attention masks [K, 2, S], lengths [K, 2]) of π_ref;
    offline: the task's preference set (prompts, chosen(_mask), rejected(_mask))."""
    seqs, attn, lengths = (np.asarray(x) for x in pairs)
    flat = seqs.reshape(-1, seqs.shape[-1])
    mask = attn.reshape(-1, attn.shape[-1])
    logp = sequence_ref_logps(cfg, ref, flat[:, :prompt_len], flat[:, prompt_len:],
                              mask[:, prompt_len:])
    gold = tasks.gold_reward(lengths.reshape(-1), task, mode).astype(np.float64)
    span = gold.max() - gold.min()
    rewards = (gold - gold.min()) / (span if span > 0 else 1.0)
    off = {k: np.asarray(v) for k, v in offline.items()}
    data = np.concatenate([sequence_ref_logps(cfg, ref, off["prompts"], off[name],
                                              off[name + "_mask"])
                           for name in ("chosen", "rejected")])
    m = modeseek.diagnose_samples(logp, rewards, beta=BETA, data_ref_logps=data)
    m = {k: float(v) for k, v in m.items()}
    rec = modeseek.recommend(m)
    return {f"diagnose_{k}": v for k, v in m.items()} | {
        "diagnose_recommendation": rec.method_class, "diagnose_samples": int(len(logp)),
        "diagnose_data": int(len(data))}


def report_lines(task_meta):
    """A Markdown table of each task's diagnostic (the keys `task_diagnostic` adds)."""
    rows = {t: m for t, m in task_meta.items() if "diagnose_ess_ratio" in m}
    if not rows:
        return []
    lines = ["", "## Diagnostic before training (modeseek.diagnose)", "",
             f"On fresh π_ref samples with the gold reward scaled to [0, 1], β = {BETA:g} "
             f"(aligned when ESS/n ≥ {modeseek.diagnose.ALIGNED_ESS:g}; the data covers π_ref "
             f"when KS ≤ {modeseek.diagnose.COVERED_KS:g}); compare with each task's measured "
             "table below.", "",
             "| task | samples | ESS/n | KL(π*‖π_ref) | Spearman(log π_ref, r) | top-10% quantile "
             "| KS(data, π_ref) | overlap | recommendation |", "|---" * 9 + "|"]
    for t, m in rows.items():
        lines.append(
            f"| {t} | {m['diagnose_samples']} | {m['diagnose_ess_ratio']:.3f} | "
            f"{m['diagnose_kl_opt_ref']:.2f} | {m['diagnose_spearman']:+.2f} | "
            f"{m['diagnose_top_quantile']:.2f} | {m['diagnose_ks']:.2f} | "
            f"{m['diagnose_overlap']:.2f} | {m['diagnose_recommendation']} |")
    return lines
