"""token_logprobs / sequence_logprobs / categorical_logprobs / masked_mean."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from jax.test_util import check_grads

import modeseek as ms

JIT = pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])

# 1×3×4 hand example. Position t−1's logits predict token t.
HAND_LOGITS = np.array([[[0.0, 0.0, 0.0, 0.0],      # predicts tokens[1]
                         [1.0, 2.0, 3.0, 4.0],      # predicts tokens[2]
                         [9.0, 0.0, 0.0, 0.0]]],    # predicts nothing (last position)
                       np.float32)
HAND_TOKENS = np.array([[2, 1, 3]], np.int32)
# t = 1: log softmax([0,0,0,0])[1] = log(1/4) = −1.3862944
# t = 2: log softmax([1,2,3,4])[3] = 4 − logsumexp(1,2,3,4)
#        = 4 − (4 + log(1 + e^−1 + e^−2 + e^−3)) = −log(1.5530018) = −0.4401897
HAND_EXPECTED = np.array([[0.0, -1.3862944, -0.4401897]])


def test_token_logprobs_hand_example():
    wrap = jax.jit  # hand values go through jit
    out = wrap(ms.token_logprobs)(jnp.asarray(HAND_LOGITS), jnp.asarray(HAND_TOKENS))
    np.testing.assert_allclose(out, HAND_EXPECTED, atol=1e-6)
    assert out.dtype == jnp.float32


def test_sequence_logprobs_hand_example():
    wrap = jax.jit  # hand values go through jit
    mask = jnp.array([[0, 1, 1]])
    # −1.3862944 − 0.4401897 = −1.8264841 (a sum, not a mean)
    out = wrap(ms.sequence_logprobs)(jnp.asarray(HAND_LOGITS), jnp.asarray(HAND_TOKENS), mask)
    np.testing.assert_allclose(out, [-1.8264841], atol=1e-6)
    # Only the last token counts: −0.4401897.
    out = wrap(ms.sequence_logprobs)(jnp.asarray(HAND_LOGITS), jnp.asarray(HAND_TOKENS),
                                     jnp.array([[0, 0, 1]]))
    np.testing.assert_allclose(out, [-0.4401897], atol=1e-6)
    # mask[:, 0] is ignored: nothing predicts the first token
    out = wrap(ms.sequence_logprobs)(jnp.asarray(HAND_LOGITS), jnp.asarray(HAND_TOKENS),
                                     jnp.array([[1, 1, 1]]))
    np.testing.assert_allclose(out, [-1.8264841], atol=1e-6)


def test_shift_by_one_changes_answer():
    # Using logits[t] (instead of logits[t−1]) for token t gives a different answer:
    # t=0: log softmax([0,0,0,0])[2] = −1.386, t=1: 2 − 4.440 = −2.440,
    # t=2: log softmax([9,0,0,0])[3] ≈ −9.0004.
    logp = ref.log_softmax(HAND_LOGITS[0])
    unshifted = logp[np.arange(3), HAND_TOKENS[0]]
    np.testing.assert_allclose(unshifted, [-1.3862944, -2.4401897, -9.0003702], atol=1e-5)
    out = np.asarray(ms.token_logprobs(jnp.asarray(HAND_LOGITS), jnp.asarray(HAND_TOKENS)))
    assert not np.allclose(out[0, 1:], unshifted[1:], atol=1e-2)
    assert not np.allclose(out[0, 1:], unshifted[:-1], atol=1e-2)  # nor shifted the other way


@JIT
def test_token_logprobs_matches_numpy_loop(wrap):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
    tokens = rng.integers(0, 11, size=(3, 7))
    mask = rng.random((3, 7)) < 0.7
    out = wrap(ms.token_logprobs)(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    np.testing.assert_allclose(out, ref.token_logprobs(logits, tokens, mask), atol=1e-5)
    out = wrap(ms.sequence_logprobs)(jnp.asarray(logits), jnp.asarray(tokens),
                                     jnp.asarray(mask.astype(np.int32)))
    np.testing.assert_allclose(out, ref.sequence_logprobs(logits, tokens, mask), atol=1e-4)


def test_padding_and_prompt_never_count():
    rng = np.random.default_rng(1)
    B, L, V = 2, 6, 5
    logits = rng.normal(size=(B, L, V)).astype(np.float32)
    tokens = rng.integers(0, V, size=(B, L))
    # row 0: prompt 0..1, response 2..3, padding 4..5; row 1: prompt 0, response 1..4, pad 5
    mask = np.array([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]], bool)
    base = ms.sequence_logprobs(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    np.testing.assert_allclose(base, ref.sequence_logprobs(logits, tokens, mask), atol=1e-5)
    # Tokens at masked positions and logits at positions t with mask[t+1] = 0 are irrelevant.
    tokens2, logits2 = tokens.copy(), logits.copy()
    tokens2[~mask] = (tokens2[~mask] + 1) % V
    for b in range(B):
        for t in range(L):
            if t == L - 1 or not mask[b, t + 1]:
                logits2[b, t] = rng.normal(size=V) * 10
    out = ms.sequence_logprobs(jnp.asarray(logits2), jnp.asarray(tokens2), jnp.asarray(mask))
    np.testing.assert_allclose(out, base, atol=1e-6)
    # ...but the last prompt position's logits predict the first response token: they count.
    logits3 = logits.copy()
    logits3[0, 1] += np.arange(V) * 3.0
    out = ms.sequence_logprobs(jnp.asarray(logits3), jnp.asarray(tokens), jnp.asarray(mask))
    assert abs(float(out[0] - base[0])) > 1e-3
    np.testing.assert_allclose(out[1], base[1], atol=1e-6)


def test_bf16_logits_give_float32():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.bfloat16)
    tokens = jnp.asarray(rng.integers(0, 7, size=(2, 5)))
    mask = jnp.ones((2, 5), bool)
    out = ms.token_logprobs(logits, tokens, mask)
    assert out.dtype == jnp.float32
    assert ms.sequence_logprobs(logits, tokens, mask).dtype == jnp.float32
    assert ms.categorical_logprobs(logits[:, 0], tokens[:, 0]).dtype == jnp.float32
    want = ref.token_logprobs(np.asarray(logits.astype(jnp.float32)), tokens, mask)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_token_logprobs_vmap_equals_loop():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(4, 2, 5, 6)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 6, size=(4, 2, 5)))
    mask = jnp.asarray(rng.random((4, 2, 5)) < 0.8)
    vm = jax.vmap(ms.sequence_logprobs)(logits, tokens, mask)
    loop = np.stack([ms.sequence_logprobs(logits[i], tokens[i], mask[i]) for i in range(4)])
    np.testing.assert_allclose(vm, loop, atol=1e-6)
    # Leading batch dims broadcast too.
    np.testing.assert_allclose(ms.sequence_logprobs(logits, tokens, mask), loop, atol=1e-6)


def test_sequence_logprobs_grads():
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 5, size=(2, 4)))
    mask = jnp.asarray([[0, 1, 1, 0], [0, 0, 1, 1]])
    f = lambda lg: ms.sequence_logprobs(lg, tokens, mask)
    check_grads(jax.jit(f), (logits,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)
    # Analytic gradient: at position t−1 it is onehot(y_t) − softmax(logits[t−1]) if mask[t].
    g = jax.grad(lambda lg: jnp.sum(f(lg)))(logits)
    p = np.exp(ref.log_softmax(np.asarray(logits)))
    want = np.zeros_like(p)
    for b in range(2):
        for t in range(1, 4):
            if mask[b, t]:
                want[b, t - 1] = np.eye(5)[int(tokens[b, t])] - p[b, t - 1]
    np.testing.assert_allclose(g, want, atol=1e-5)


def test_categorical_logprobs():
    wrap = jax.jit  # hand values go through jit
    logits = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    out = wrap(ms.categorical_logprobs)(logits, jnp.array([1, 0]))
    # log(1/2) = −0.6931472; log softmax([1,2])[0] = −log(1 + e) = −1.3132617
    np.testing.assert_allclose(out, [-0.6931472, -1.3132617], atol=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="logits"):
        ms.token_logprobs(jnp.zeros((1, 3, 4)), jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="mask"):
        ms.token_logprobs(jnp.zeros((1, 3, 4)), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 2)))


@JIT
def test_masked_mean_where_equals_slicing(wrap):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    w = rng.random((4, 6)) < 0.5
    w[2] = False  # an empty row gives 0, not NaN
    out = wrap(lambda a, b: ms.masked_mean(a, b, axis=-1))(x, w)
    want = [x[i][w[i]].mean() if w[i].any() else 0.0 for i in range(4)]
    np.testing.assert_allclose(out, want, atol=1e-6)
    np.testing.assert_allclose(wrap(ms.masked_mean)(x, w), x[w].mean(), atol=1e-6)
    np.testing.assert_allclose(ms.masked_mean(x, axis=0), x.mean(0), atol=1e-6)
    np.testing.assert_allclose(ms.masked_mean(x, w, axis=0), ref.masked_mean(x, w, axis=0),
                               atol=1e-6)
    # broadcasting mask
    np.testing.assert_allclose(ms.masked_mean(x, w[:1], axis=-1),
                               ref.masked_mean(x, np.broadcast_to(w[:1], x.shape), axis=-1),
                               atol=1e-6)


def test_categorical_logprobs_checks_rank_at_the_boundary():
    # chex.assert_rank at the API boundary: logits must have one more axis than actions.
    logits = jnp.zeros((2, 5))
    with pytest.raises(AssertionError, match="rank"):
        ms.categorical_logprobs(logits, jnp.zeros((2, 3), jnp.int32))
    np.testing.assert_allclose(ms.categorical_logprobs(logits, jnp.array([0, 4])),
                               [-np.log(5)] * 2, rtol=1e-6)
