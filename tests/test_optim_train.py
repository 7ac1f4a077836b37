"""make_optimizer / make_schedule against a NumPy Adam(W) reference; the train-step factory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import modeseek as ms


def np_adamw(grads, p0, lr_fn, *, wd=0.0, clip=None, b1=0.9, b2=0.999, eps=1e-8):
    """Reference: clip by global norm → Adam with bias correction → decoupled weight decay,
    the learning rate evaluated at the optimizer-update count t = 0, 1, ..."""
    p, m, v = np.array(p0, np.float64), 0.0, 0.0
    for t, g in enumerate(grads):
        g = np.asarray(g, np.float64)
        if clip is not None:
            g = g * min(1.0, clip / np.linalg.norm(g))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
        p = p - lr_fn(t) * (mh / (np.sqrt(vh) + eps) + wd * p)
    return p


def _run(tx, p0, grads, jit=True):
    state = tx.init(p0)
    p = p0
    update = jax.jit(tx.update) if jit else tx.update
    for g in grads:
        upd, state = update(g, state, p)
        p = optax.apply_updates(p, upd)
    return p


def _cos(peak, warmup, total):
    def f(t):
        if t < warmup:
            return peak * t / warmup
        frac = min((t - warmup) / (total - warmup), 1.0)
        return peak * 0.5 * (1 + np.cos(np.pi * frac))
    return f


def test_schedule_values():
    s = ms.make_schedule(1.0, schedule="cosine", warmup_steps=10, total_steps=110)
    # warmup: t/10; then ½(1 + cos(π(t − 10)/100)): t = 35 → ½(1 + cos(π/4)) = 0.8535534
    for t, want in [(0, 0.0), (5, 0.5), (10, 1.0), (35, 0.8535534), (60, 0.5), (110, 0.0),
                    (200, 0.0)]:
        np.testing.assert_allclose(s(t), want, atol=1e-6, err_msg=str(t))
    s = ms.make_schedule(2.0, schedule="linear", warmup_steps=2, total_steps=10)
    for t, want in [(0, 0.0), (1, 1.0), (2, 2.0), (6, 1.0), (10, 0.0), (12, 0.0)]:
        np.testing.assert_allclose(s(t), want, atol=1e-6, err_msg=str(t))
    # no warmup: the first update already uses the peak rate (linear as cosine)
    for name in ("linear", "cosine"):
        s = ms.make_schedule(1.0, schedule=name, total_steps=10)
        np.testing.assert_allclose(s(0), 1.0, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(s(5), 0.5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(s(10), 0.0, atol=1e-6, err_msg=name)
    s = ms.make_schedule(1.0, warmup_steps=4)
    for t, want in [(0, 0.0), (2, 0.5), (4, 1.0), (100, 1.0)]:
        np.testing.assert_allclose(s(t), want, atol=1e-6)
    assert ms.make_schedule(0.3) == 0.3


@pytest.mark.parametrize("cfg", [
    dict(),
    dict(weight_decay=0.1, max_grad_norm=1.0),
    dict(schedule="cosine", warmup_steps=2, total_steps=6, max_grad_norm=0.5),
], ids=["adam", "adamw-clip", "cosine-clip"])
def test_pipeline_matches_numpy_adamw(cfg):
    rng = np.random.default_rng(0)
    p0 = jnp.asarray(rng.normal(size=4), jnp.float32)
    grads = [jnp.asarray(rng.normal(size=4) * s, jnp.float32) for s in (5.0, 0.1, 2.0, 0.3, 1.0)]
    lr = 0.1
    tx = ms.make_optimizer(learning_rate=lr, **cfg)
    lr_fn = (_cos(lr, cfg["warmup_steps"], cfg["total_steps"]) if "schedule" in cfg
             else lambda t: lr)
    want = np_adamw(grads, p0, lr_fn, wd=cfg.get("weight_decay", 0.0),
                    clip=cfg.get("max_grad_norm"))
    np.testing.assert_allclose(_run(tx, p0, grads), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_accumulation_equals_big_batch_step(k):
    rng = np.random.default_rng(1)
    p0 = {"w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32), "b": jnp.zeros(3)}
    cfg = dict(learning_rate=0.05, schedule="cosine", warmup_steps=1, total_steps=4,
               max_grad_norm=1.0, weight_decay=0.01)
    micro = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p0)
             for _ in range(2 * k)]
    acc_tx = ms.make_optimizer(accumulation_steps=k, **cfg)
    state, p, update = acc_tx.init(p0), p0, jax.jit(acc_tx.update)
    for i, g in enumerate(micro):
        upd, state = update(g, state, p)
        p = optax.apply_updates(p, upd)
        if i == k - 2:  # mid-accumulation: no update yet
            jax.tree.map(np.testing.assert_array_equal, p, p0)
    big = [jax.tree.map(lambda *gs: sum(gs) / k, *micro[j * k:(j + 1) * k]) for j in range(2)]
    want = _run(ms.make_optimizer(**cfg), p0, big)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p, want)
    # ...and differs from stepping on every micro-batch (the test can tell them apart)
    naive = _run(ms.make_optimizer(**cfg), p0, micro)
    assert not np.allclose(naive["w"], want["w"], atol=1e-4)


@pytest.mark.parametrize("sched", [dict(), dict(warmup_steps=2),
                                   dict(schedule="linear", warmup_steps=1, total_steps=3),
                                   dict(schedule="cosine", total_steps=3),
                                   dict(schedule="cosine", warmup_steps=1, total_steps=3)],
                         ids=["constant", "warmup", "linear", "cosine", "warmup-cosine"])
def test_traced_learning_rate_and_weight_decay_under_vmap(sched):
    p0 = jnp.array([1.0, -2.0])
    grads = [jnp.array([0.5, 0.2]), jnp.array([-0.1, 0.4]), jnp.array([0.3, 0.3])]

    def run(lr, wd):
        return _run(ms.make_optimizer(learning_rate=lr, weight_decay=wd, **sched), p0, grads,
                    jit=False)

    lrs, wds = jnp.array([0.01, 0.1, 0.3]), jnp.array([0.0, 0.1, 0.5])
    vm = jax.jit(jax.vmap(run))(lrs, wds)
    for i in range(3):
        lr, wd = float(lrs[i]), float(wds[i])
        np.testing.assert_allclose(vm[i], run(lr, wd), rtol=1e-5, atol=1e-7)
        if sched.get("schedule") == "cosine":
            np.testing.assert_allclose(
                vm[i], np_adamw(grads, p0, _cos(lr, sched.get("warmup_steps", 0), 3), wd=wd),
                rtol=1e-5, atol=1e-6)


def test_bad_optimizer_inputs():
    for lr in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="learning_rate"):
            ms.make_optimizer(learning_rate=lr)
    with pytest.raises(ValueError, match="accumulation_steps"):
        ms.make_optimizer(learning_rate=0.1, accumulation_steps=0)
    with pytest.raises(ValueError, match="schedule"):
        ms.make_optimizer(learning_rate=0.1, schedule="step")
    with pytest.raises(ValueError, match="total_steps"):
        ms.make_optimizer(learning_rate=0.1, schedule="cosine")
    with pytest.raises(ValueError, match="max_grad_norm"):
        ms.make_optimizer(learning_rate=0.1, max_grad_norm=0.0)


# ---------------------------------------------------------------- train step


def test_train_step():
    target = jnp.array([1.0, 2.0, 3.0])

    def loss_fn(params, batch, key):
        del key
        r = params["w"] * batch["x"] - target
        return jnp.sum(r ** 2), {"residual": jnp.sum(r)}

    params = {"w": jnp.array([0.5, -1.0, 2.0])}
    batch = {"x": jnp.array([1.0, 2.0, 0.5])}
    tx = ms.make_optimizer(learning_rate=0.1)
    state = ms.init_train_state(params, tx)
    step = jax.jit(ms.make_train_step(loss_fn, tx))
    new, metrics = step(state, batch, jax.random.key(0))
    # grad = 2 r x with r = (−0.5, −4, −2): (−1, −16, −2); |g| = √261 = 16.155494
    np.testing.assert_allclose(metrics["grad_norm"], 16.155494, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], 0.25 + 16 + 4)
    np.testing.assert_allclose(metrics["residual"], -6.5)
    # Adam's first step moves each coordinate by lr against the gradient's sign
    np.testing.assert_allclose(new.params["w"], params["w"] + 0.1, atol=1e-5)
    assert int(new.step) == 1 and new.step.dtype == jnp.int32
    new2, _ = step(new, batch, jax.random.key(1))
    assert int(new2.step) == 2


def test_train_step_vmaps_over_learning_rates():
    params, batch = jnp.array([0.5, -0.5]), {"y": jnp.array([1.0, 1.0])}
    loss_fn = lambda p, b, k: (jnp.sum((p - b["y"]) ** 2), {})

    def two_steps(lr):
        tx = ms.make_optimizer(learning_rate=lr)
        step = ms.make_train_step(loss_fn, tx)
        s = ms.init_train_state(params, tx)
        for i in range(2):
            s, _ = step(s, batch, jax.random.key(i))
        return s.params

    lrs = jnp.array([0.01, 0.2])
    vm = jax.jit(jax.vmap(two_steps))(lrs)
    for i in range(2):
        np.testing.assert_allclose(vm[i], two_steps(float(lrs[i])), rtol=1e-6)
    assert not np.allclose(vm[0], vm[1])


def test_fused_adam_matches_numpy_and_optax_under_vmap():
    from modeseek.optim import fused_adam

    rng = np.random.default_rng(3)
    p0 = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p0)
             for _ in range(6)]
    # Hand value: the first Adam step moves each parameter by −lr·g/(|g| + eps) ≈ −lr·sign(g).
    one = _run(fused_adam(0.1), p0, grads[:1])
    np.testing.assert_allclose(one["w"], p0["w"] - 0.1 * np.sign(grads[0]["w"]), atol=1e-6)
    lrs = jnp.array([1e-3, 3e-2])
    runs = jax.vmap(lambda lr: _run(fused_adam(lr), p0, grads, jit=False))(lrs)
    for i, lr in enumerate(lrs.tolist()):
        for k in p0:
            want = np_adamw([g[k] for g in grads], p0[k], lambda t, lr=lr: lr)
            np.testing.assert_allclose(runs[k][i], want, rtol=1e-5, atol=1e-6, err_msg=k)
            np.testing.assert_allclose(runs[k][i], _run(optax.adam(lr), p0, grads)[k],
                                       rtol=1e-5, atol=1e-6, err_msg=k)
    with pytest.raises(ValueError, match="learning_rate"):
        fused_adam(0.0)
