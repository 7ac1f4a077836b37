"""Bandit policies: the authors' MLP over prompts and an exact tabular policy.

A policy is a pair of pure functions, `init(key) -> params` and
`logits(params, prompts_PxD) -> logits_PxA`.

- MLP (Tajwar et al., §4): 100 → 50 → LayerNorm → ReLU → 256 → ReLU → 256 → ReLU → A,
  Xavier-uniform weights with gain 0.01 (a near-uniform start), zero biases; then "SFT" towards
  π_ref by full-batch Adam on KL(π_θ ‖ π_ref) (`sft_to_reference`).
- Tabular: one logit vector shared by all prompts (the reward ignores prompts), initialised
  exactly at log π_ref, so no SFT is needed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from modeseek import kl_divergence

MLP_WIDTHS = (50, 256, 256)


class Policy(NamedTuple):
    init: callable
    logits: callable


def _xavier_uniform(key, fan_in, fan_out, gain):
    limit = gain * jnp.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -limit, limit)


def mlp_policy(num_actions: int, prompt_dim: int, gain: float = 0.01) -> Policy:
    sizes = (prompt_dim,) + MLP_WIDTHS + (num_actions,)

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [{"w": _xavier_uniform(k, a, b, gain), "b": jnp.zeros((b,), jnp.float32)}
                  for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
        norm = {"scale": jnp.ones((sizes[1],), jnp.float32),
                "bias": jnp.zeros((sizes[1],), jnp.float32)}
        return {"layers": layers, "norm": norm}

    def logits(params, prompts_PxD):
        first, *rest = params["layers"]
        h = prompts_PxD @ first["w"] + first["b"]
        mean = jnp.mean(h, -1, keepdims=True)
        var = jnp.var(h, -1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + 1e-5) * params["norm"]["scale"] + (
            params["norm"]["bias"])
        for layer in rest:
            h = jax.nn.relu(h) @ layer["w"] + layer["b"]
        return h

    return Policy(init, logits)


def tabular_policy(ref_logprobs) -> Policy:
    """Shared logits initialised at log π_ref (exactly the reference policy)."""
    ref_logprobs = jnp.asarray(ref_logprobs, jnp.float32)

    def init(key):
        del key
        return {"logits": ref_logprobs}

    def logits(params, prompts_PxD):
        return jnp.broadcast_to(params["logits"], (prompts_PxD.shape[0],) + ref_logprobs.shape)

    return Policy(init, logits)


def make_policy(kind: str, ref_logprobs, prompt_dim: int) -> Policy:
    if kind == "mlp":
        return mlp_policy(ref_logprobs.shape[-1], prompt_dim)
    if kind == "tabular":
        return tabular_policy(ref_logprobs)
    raise ValueError(f"unknown policy {kind!r}; known policies: mlp, tabular")


def sft_to_reference(policy: Policy, params, prompts_PxD, ref_logprobs, *, steps=100,
                     learning_rate=0.01):
    """Full-batch Adam on mean_x KL(π_θ(·|x) ‖ π_ref) for `steps` steps (a `lax.scan`).

    Returns (params, final KL).
    """
    tx = optax.adam(learning_rate)
    ref = jnp.asarray(ref_logprobs, jnp.float32)

    def kl(p):
        logp = jax.nn.log_softmax(policy.logits(p, prompts_PxD), -1)
        return jnp.mean(kl_divergence(logp, ref))

    def step(carry, _):
        p, s = carry
        grads = jax.grad(kl)(p)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params, kl(params)
