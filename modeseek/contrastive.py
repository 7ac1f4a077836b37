"""Contrastive (pairwise) preference losses: DPO, IPO, SLiC-hinge, SimPO, robust DPO, and the
Bradley–Terry reward-model loss.

Every function is elementwise over its (broadcast-compatible) inputs and returns the
**per-pair** loss; the caller reduces (see `modeseek.masked_mean`). Inputs are *sequence*
log-probabilities (masked sums over response tokens, `modeseek.sequence_logprobs`).

Shared notation: the log-ratio margin

    h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)].

Both terms of h carry gradient; pushing log π(y_l) down is the "negative gradient" of
Tajwar et al. (ICML 2024, §6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from modeseek._checks import check_in_range, check_positive, check_same_shape


def logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                    ref_rejected_logps):
    """h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)), in float32."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return (f32(policy_chosen_logps) - f32(ref_chosen_logps)) - (
        f32(policy_rejected_logps) - f32(ref_rejected_logps))


def _margin_checked(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                    ref_rejected_logps):
    # Broadcasting is allowed (pairwise_loss evaluates [..., N, 1] against [..., 1, N]) but
    # only between arrays of equal rank, so [B] against [B, 1] cannot silently give [B, B].
    arrays = dict(policy_chosen_logps=policy_chosen_logps,
                  policy_rejected_logps=policy_rejected_logps,
                  ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    if len({jnp.ndim(x) for x in arrays.values()}) > 1:
        check_same_shape(**arrays)
    try:
        jnp.broadcast_shapes(*(jnp.shape(x) for x in (
            policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)))
    except ValueError:
        check_same_shape(policy_chosen_logps=policy_chosen_logps,
                         policy_rejected_logps=policy_rejected_logps,
                         ref_chosen_logps=ref_chosen_logps,
                         ref_rejected_logps=ref_rejected_logps)
    return logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                           ref_rejected_logps)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta, label_smoothing=0.0):
    """Direct Preference Optimisation (Rafailov et al., 2023), with conservative smoothing.

        loss = −(1 − ε) · log σ(β·h) − ε · log σ(−β·h)

    ε = `label_smoothing` is cDPO's probability that the label is flipped (ε = 0: plain DPO).
    At π = π_ref the loss is log 2. Shapes: any broadcastable [...]; returns [...].
    """
    check_positive("beta", beta)
    check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)
    h = _margin_checked(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                        ref_rejected_logps)
    logits = beta * h
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - (
        label_smoothing * jax.nn.log_sigmoid(-logits))


def robust_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                    ref_rejected_logps, *, beta, label_smoothing):
    """Robust DPO (Chowdhury et al., 2024): unbiased under label-flip rate ε.

        loss = [(1 − ε) · (−log σ(β·h)) − ε · (−log σ(−β·h))] / (1 − 2ε)
    """
    check_positive("beta", beta)
    check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)
    h = _margin_checked(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                        ref_rejected_logps)
    logits = beta * h
    eps = label_smoothing
    return (-(1.0 - eps) * jax.nn.log_sigmoid(logits)
            + eps * jax.nn.log_sigmoid(-logits)) / (1.0 - 2.0 * eps)


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, tau):
    """Identity Preference Optimisation (Azar et al., 2023), on sequence log-ratios:

        loss = (h − 1/(2τ))²,     minimised at h = 1/(2τ).

    Convention: τ is the IPO paper's regulariser. Tajwar et al.'s bandit code instead passes the
    target margin itself as "beta" (beta = 10 there means 1/(2τ) = 10, i.e. τ = 0.05); convert
    with `tau = 1 / (2 * target_margin)`. Some implementations average log-probs over tokens
    before forming h; here h uses sequence sums, like every loss in modeseek.
    """
    check_positive("tau", tau)
    h = _margin_checked(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                        ref_rejected_logps)
    return jnp.square(h - 1.0 / (2.0 * tau))


def slic_hinge_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                    ref_rejected_logps, *, beta, margin=1.0):
    """SLiC-HF calibration hinge (Zhao et al., 2023) on the reference-relative margin:

        loss = max(0, margin − β·h)

    (the "hinge" DPO variant; with a uniform reference it is SLiC's max(0, δ − log π(y_w)
    + log π(y_l))).
    """
    check_positive("beta", beta)
    h = _margin_checked(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                        ref_rejected_logps)
    return jax.nn.relu(margin - beta * h)


def simpo_loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths,
               *, beta, gamma=0.5):
    """SimPO (Meng et al., 2024): reference-free, length-normalised.

        loss = −log σ(β·(log π(y_w)/|y_w| − log π(y_l)/|y_l|) − γ)

    Lengths are response token counts (clipped below at 1).
    """
    check_positive("beta", beta)
    check_same_shape(policy_chosen_logps=policy_chosen_logps,
                     policy_rejected_logps=policy_rejected_logps)
    avg = lambda lp, n: jnp.asarray(lp, jnp.float32) / jnp.maximum(
        jnp.asarray(n, jnp.float32), 1.0)
    logits = beta * (avg(policy_chosen_logps, chosen_lengths)
                     - avg(policy_rejected_logps, rejected_lengths)) - gamma
    return -jax.nn.log_sigmoid(logits)


def bradley_terry_loss(chosen_scores, rejected_scores, *, label_smoothing=0.0):
    """Reward-model loss under the Bradley–Terry model P(y_w ≻ y_l) = σ(s_w − s_l):

        loss = −(1 − ε) · log σ(s_w − s_l) − ε · log σ(s_l − s_w)
    """
    check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)
    d = jnp.asarray(chosen_scores, jnp.float32) - jnp.asarray(rejected_scores, jnp.float32)
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(d) - (
        label_smoothing * jax.nn.log_sigmoid(-d))
