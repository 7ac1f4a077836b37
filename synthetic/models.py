"""Reference policies (SFT) and proxy reward models (Bradley–Terry), with an on-disk cache.

SFT loss, per response token t (mask m_t, logits at t−1 predict token t, see
`modeseek.token_logprobs`):
    hard targets  −(1/Σm) Σ_t m_t log π(y_t | y_<t)
    soft target   −(1/Σm) Σ_t m_t Σ_v q(v) log π(v | y_<t)   (token bandit: q = π_ref per token,
                  i.e. KL(q ‖ π) up to a constant, no sampling noise in the target)
Reward model: the decoder with a scalar head (`modeseek.decoder.score`, the head read at the
last non-pad token), initialised from the reference decoder (as the paper's RMs start from the
SFT model), trained with −log σ(s_w − s_l) (`modeseek.bradley_terry_loss`).

Both trainers are one `lax.scan` over steps inside one jit; minibatches are drawn with
`fold_in(key, step)`. Cached parameters are stored as `.npz` of named arrays (no pickles),
keyed by a hash of everything that determines them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import modeseek
from modeseek import decoder as dec


def length_model_config(vocab_size: int, max_len: int, **overrides) -> dec.DecoderConfig:
    """The length tasks' model: `DecoderConfig.tiny` (2 layers, 48 dims) on the small vocab."""
    return dec.DecoderConfig.tiny(vocab_size=vocab_size, max_len=max_len, **overrides)


def token_model_config(vocab_size: int = 100, **overrides) -> dec.DecoderConfig:
    """The authors' token-bandit GPT size: 3 layers, 3 heads, 48 dims."""
    base = dict(vocab_size=vocab_size, num_layers=3, num_heads=3, num_kv_heads=3, head_dim=16,
                embed_dim=48, mlp_dim=192, norm="layer", mlp="gelu", max_len=32,
                tied_embeddings=True)
    return dec.DecoderConfig(**{**base, **overrides})


def _minibatch(key, step, arrays, batch):
    idx = jax.random.randint(jax.random.fold_in(key, step), (batch,), 0, arrays[0].shape[0])
    return [a[idx] for a in arrays]


@functools.partial(jax.jit, static_argnames=("config", "steps", "batch"))
def _sft(key, params, tokens, mask, soft_target, *, config, steps, batch, learning_rate):
    opt = modeseek.make_optimizer(learning_rate=learning_rate, max_grad_norm=1.0)

    def loss_fn(p, tok, m):
        logits = dec.forward(p, config, tok)
        if soft_target is None:
            per_tok = -modeseek.token_logprobs(logits, tok, m)
        else:
            logq = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
            ce = -jnp.sum(soft_target * logq, -1)
            per_tok = jnp.concatenate([jnp.zeros_like(ce[:, :1]), ce], 1) * m
        return jnp.sum(per_tok) / jnp.maximum(jnp.sum(m), 1)

    def step(carry, i):
        p, s = carry
        tok, m = _minibatch(key, i, (tokens, mask), batch)
        loss, g = jax.value_and_grad(loss_fn)(p, tok, m)
        upd, s = opt.update(g, s, p)
        return (jax.tree.map(jnp.add, p, upd), s), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    return params, losses


def train_reference(key, config, tokens, loss_mask, *, steps, batch, learning_rate,
                    soft_target=None):
    """SFT from a random init. Returns (params, per-step losses as numpy)."""
    k_init, k_data = jax.random.split(key)
    params = dec.init_params(k_init, config)
    target = None if soft_target is None else jnp.asarray(soft_target, jnp.float32)
    params, losses = _sft(k_data, params, jnp.asarray(tokens), jnp.asarray(loss_mask), target,
                          config=config, steps=steps, batch=batch, learning_rate=learning_rate)
    return params, np.asarray(losses)


@functools.partial(jax.jit, static_argnames=("config",))
def score_pairs(rm_params, chosen, chosen_mask, rejected, rejected_mask, *, config):
    """(s_w, s_l) for full sequences (prompt + response) with their attention masks."""
    s_w = dec.score(rm_params, config, chosen, chosen_mask)
    s_l = dec.score(rm_params, config, rejected, rejected_mask)
    return s_w, s_l


@functools.partial(jax.jit, static_argnames=("config", "steps", "batch"))
def _bt(key, params, arrays, *, config, steps, batch, learning_rate):
    opt = modeseek.make_optimizer(learning_rate=learning_rate, max_grad_norm=1.0)

    def loss_fn(p, w, wm, lo, lm):
        s_w, s_l = score_pairs(p, w, wm, lo, lm, config=config)
        return jnp.mean(modeseek.bradley_terry_loss(s_w, s_l))

    def step(carry, i):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, *_minibatch(key, i, arrays, batch))
        upd, s = opt.update(g, s, p)
        return (jax.tree.map(jnp.add, p, upd), s), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    return params, losses


def train_reward_model(key, config, ref_params, pairs, *, steps, batch, learning_rate):
    """Bradley–Terry on `pairs` = (chosen, chosen_mask, rejected, rejected_mask) full sequences.
    Returns (rm_params {"decoder", "head"}, per-step losses)."""
    params = {"decoder": ref_params, "head": dec.init_scalar_head(key, config)}
    arrays = tuple(jnp.asarray(a) for a in pairs)
    params, losses = _bt(jax.random.fold_in(key, 1), params, arrays, config=config, steps=steps,
                         batch=batch, learning_rate=learning_rate)
    return params, np.asarray(losses)


def preference_accuracy(rm_params, config, pairs, batch: int = 256) -> float:
    """Fraction of pairs with s_w > s_l (ties count half)."""
    hits, n = 0.0, len(pairs[0])
    for i in range(0, n, batch):
        s_w, s_l = score_pairs(rm_params, *(jnp.asarray(a[i:i + batch]) for a in pairs),
                               config=config)
        d = np.asarray(s_w - s_l)
        hits += float(np.sum(d > 0) + 0.5 * np.sum(d == 0))
    return hits / n


# ----------------------------------------------------------------------------- cache


def cache_key(name: str, spec: dict) -> str:
    blob = json.dumps(spec, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def _flatten(tree):
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        flat["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
    return flat


def _unflatten(flat):
    tree = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value)
    return tree


def save_cached(directory: str, key: str, arrays: dict, meta: dict) -> None:
    """Write `key`.npz (arrays; nested dicts of params flattened with "/") and `key`.json."""
    os.makedirs(directory, exist_ok=True)
    flat = {}
    for name, value in arrays.items():
        if isinstance(value, dict):
            flat.update({f"{name}/{k}": v for k, v in _flatten(value).items()})
        else:
            flat[name] = np.asarray(value)
    tmp = os.path.join(directory, key + ".tmp.npz")
    np.savez(tmp, **flat)
    os.replace(tmp, os.path.join(directory, key + ".npz"))
    with open(os.path.join(directory, key + ".json"), "w") as f:
        json.dump(meta, f, indent=1)


def load_cached(directory: str, key: str):
    """(arrays, meta) or None when absent. Parameter trees come back as nested dicts."""
    path = os.path.join(directory, key + ".npz")
    if not (os.path.exists(path) and os.path.exists(os.path.join(directory, key + ".json"))):
        return None
    with np.load(path, allow_pickle=False) as f:
        tree = _unflatten({k: f[k] for k in f.files})
    with open(os.path.join(directory, key + ".json")) as f:
        meta = json.load(f)
    arrays = {k: (v if isinstance(v, dict) else np.asarray(v)) for k, v in tree.items()}
    return arrays, meta
