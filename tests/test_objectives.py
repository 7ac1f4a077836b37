"""Group objectives ([P, N] batches) against NumPy references of their documented reductions;
preference metrics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

import modeseek as ms
from modeseek import objectives as obj

HP = dict(ms.DEFAULT_HPARAMS, beta=0.4, tau=0.3, threshold=0.5, label_smoothing=0.1,
          clip_eps=0.15, kl_coef=0.2, negative_coef=0.7, rwr_beta=0.8, weight_clip=2.0)


def _batch(seed=0, P=4, N=5, masked=True):
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 4, size=(P, N)).astype(np.float32)  # ties included
    ref_logps = (rng.normal(size=(P, N)) - 3).astype(np.float32)
    old_logps = (ref_logps + 0.3 * rng.normal(size=(P, N))).astype(np.float32)
    logps = (old_logps + 0.3 * rng.normal(size=(P, N))).astype(np.float32)
    batch = dict(rewards=rewards, ref_logps=ref_logps, old_logps=old_logps)
    if masked:
        mask = rng.random((P, N)) < 0.75
        mask[0] = True
        mask[1, 2:] = False
        batch["mask"] = mask
    return logps, batch


CASES = {
    "dpo": (obj.dpo_objective, lambda lp, b: ref.contrastive_objective(
        lambda *a: ref.dpo(*a, beta=0.4, eps=0.1), lp, b, threshold=0.5)),
    "ipo": (obj.ipo_objective, lambda lp, b: ref.contrastive_objective(
        lambda *a: ref.ipo(*a, tau=0.3), lp, b, threshold=0.5)),
    "slic": (obj.slic_objective, lambda lp, b: ref.contrastive_objective(
        lambda *a: ref.slic(*a, beta=0.4), lp, b, threshold=0.5)),
    "pref_ft": (obj.pref_ft_objective, lambda lp, b: ref.pref_ft_objective(lp, b, 0.5)),
    "bofn": (obj.best_of_n_objective, lambda lp, b: ref.best_of_n_objective(lp, b)),
    "bofn_top2_worst": (functools.partial(obj.best_of_n_objective, top_k=2, negative="worst"),
                        lambda lp, b: ref.best_of_n_objective(lp, b, 2, "worst", 0.7)),
    "bofn_all_worse": (functools.partial(obj.best_of_n_objective, negative="all_worse"),
                       lambda lp, b: ref.best_of_n_objective(lp, b, 1, "all_worse", 0.7)),
    "rwr": (obj.rwr_objective, lambda lp, b: ref.rwr_objective(lp, b, 0.8, clip=2.0)),
    "reinforce": (obj.reinforce_objective, lambda lp, b: ref.reinforce_objective(lp, b)),
    "reinforce_mean": (functools.partial(obj.reinforce_objective, baseline="mean"),
                       lambda lp, b: ref.reinforce_objective(lp, b, "mean")),
    "rloo": (functools.partial(obj.reinforce_objective, baseline="rloo"),
             lambda lp, b: ref.reinforce_objective(lp, b, "rloo")),
    "reinforce_nonneg": (functools.partial(obj.reinforce_objective, nonnegative=True),
                         lambda lp, b: ref.reinforce_objective(lp, b, nonnegative=True)),
    "ppo": (obj.ppo_objective, lambda lp, b: ref.ppo_objective(lp, b, 0.15, 0.2)),
}


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "nomask"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_objective_matches_numpy(name, masked):
    fn, reference = CASES[name]
    logps, batch = _batch(masked=masked)
    out = jax.jit(fn)(logps, batch, HP)
    np.testing.assert_allclose(out, reference(logps, batch), rtol=2e-5, atol=2e-5)
    assert out.shape == ()


def test_objectives_with_negative_clip_and_no_pairs():
    logps, batch = _batch(1)
    out = jax.jit(functools.partial(obj.best_of_n_objective, negative="all_worse",
                                    negative_clip=0.1))(logps, batch, HP)
    want = ref.best_of_n_objective(logps, batch, 1, "all_worse", 0.7, clip=0.1)
    np.testing.assert_allclose(out, want, rtol=1e-5)
    # all rewards tied: no pair, loss 0 with a finite (zero) gradient
    tied = dict(batch, rewards=np.zeros_like(batch["rewards"]))
    for fn in (obj.dpo_objective, obj.ipo_objective, obj.pref_ft_objective):
        val, g = jax.jit(jax.value_and_grad(fn))(jnp.asarray(logps), tied, HP)
        assert float(val) == 0.0 and np.all(np.asarray(g) == 0)


def test_masked_samples_get_no_gradient():
    logps, batch = _batch(2)
    names = sorted(CASES)
    grads = jax.jit(lambda lp: [jax.grad(CASES[n][0])(lp, batch, HP) for n in names])(
        jnp.asarray(logps))  # one compilation for all objectives
    for name, g in zip(names, grads):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), name
        assert np.all(g[~batch["mask"]] == 0), name
        assert np.any(g[batch["mask"]] != 0), name


def test_traced_hparams_vmap_equals_loop():
    logps, batch = _batch(3)
    betas = jnp.array([0.05, 0.4, 2.0])
    vm = jax.vmap(lambda b: obj.dpo_objective(logps, batch, dict(HP, beta=b)))(betas)
    dpo = jax.jit(obj.dpo_objective)  # traced beta: one compilation for the loop
    loop = [dpo(logps, batch, dict(HP, beta=float(b))) for b in betas]
    np.testing.assert_allclose(vm, loop, rtol=1e-5)
    eps = jnp.array([0.05, 0.3])
    vm = jax.vmap(lambda e: obj.ppo_objective(logps, batch, dict(HP, clip_eps=e)))(eps)
    ppo = jax.jit(obj.ppo_objective)
    loop = [ppo(logps, batch, dict(HP, clip_eps=float(e))) for e in eps]
    np.testing.assert_allclose(vm, loop, rtol=1e-5)


def test_pair_logratio_metrics():
    logps, batch = _batch(4)
    mask = ms.ranked_pairs_mask(batch["rewards"], where=batch["mask"])
    m = obj.pair_logratio_metrics(logps, batch["ref_logps"], mask)
    ratio = logps - batch["ref_logps"]
    pairs = [(p, i, j) for p in range(len(logps))
             for i, j in ref.ranked_pairs(batch["rewards"][p], 0.0, batch["mask"][p])]
    assert int(m["num_pairs"]) == len(pairs)
    np.testing.assert_allclose(m["logratio/chosen"], np.mean([ratio[p, i] for p, i, _ in pairs]),
                               rtol=1e-5)
    np.testing.assert_allclose(m["logratio/rejected"],
                               np.mean([ratio[p, j] for p, _, j in pairs]), rtol=1e-5)


def test_preference_metrics():
    rng = np.random.default_rng(5)
    pc, pr, rc, rr = (rng.normal(size=6).astype(np.float32) - 2 for _ in range(4))
    w = np.array([1, 1, 0, 1, 0, 1], bool)
    m = jax.jit(functools.partial(ms.preference_metrics, beta=0.5))(pc, pr, rc, rr, where=w)
    lc, lr = (pc - rc)[w].astype(np.float64), (pr - rr)[w].astype(np.float64)
    want = {"rewards/chosen": 0.5 * lc.mean(), "rewards/rejected": 0.5 * lr.mean(),
            "rewards/margin": 0.5 * (lc - lr).mean(), "rewards/accuracy": (lc > lr).mean(),
            "logratio/chosen": lc.mean(), "logratio/rejected": lr.mean(),
            "logps/chosen": pc[w].mean(), "logps/rejected": pr[w].mean()}
    assert set(m) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(m[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(ms.implicit_rewards(pc, rc, beta=0.5), 0.5 * (pc - rc), rtol=1e-6)
