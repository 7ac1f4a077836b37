"""The synthetic tier's diagnostic (synthetic/diagnose.py) on a tiny random decoder: log π_ref
of a response equals the sampler's own log-probs (an independent code path: cached decoding),
the measures are modeseek.diagnose_samples on the scaled gold reward, and the report table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import modeseek
from modeseek import decoder as dec
from synthetic import diagnose, models, tasks

P, T, V = 4, 8, 12


@pytest.fixture(scope="module")
def sampled(n=48):
    """A random 1-layer decoder and n of its samples (the sampler compiles once)."""
    cfg = models.length_model_config(V, P + T, num_layers=1)
    params = dec.init_params(jax.random.key(0), cfg)
    prompts = tasks.language_prompts(np.random.default_rng(0), n, V, P)
    out = modeseek.sample(jax.random.key(1), params, cfg, jnp.asarray(prompts),
                          jnp.ones(prompts.shape, jnp.int32), max_new_tokens=T,
                          eos_id=tasks.EOS, pad_id=tasks.PAD)
    return cfg, params, prompts, out


def test_sequence_ref_logps_equal_the_samplers_logprobs(sampled):
    cfg, params, prompts, out = sampled
    got = diagnose.sequence_ref_logps(cfg, params, prompts, np.asarray(out.response_tokens),
                                      np.asarray(out.response_mask), batch=16)
    want = np.sum(np.asarray(out.response_logps) * np.asarray(out.response_mask), -1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.std(want) > 0.1  # distinct responses, so a constant could not pass


def test_task_diagnostic_is_diagnose_samples_on_the_scaled_gold_reward(sampled):
    cfg, params, prompts, out = sampled
    resp, mask = np.asarray(out.response_tokens), np.asarray(out.response_mask)
    k = len(prompts) // 2
    seqs = np.concatenate([prompts, resp], 1).reshape(k, 2, -1)
    attn = np.concatenate([np.ones_like(prompts), mask], 1).reshape(k, 2, -1)
    lengths = tasks.response_lengths(resp, mask).reshape(k, 2)
    # the data: rows 0–9 as both chosen and rejected (each with its own prompt)
    offline = dict(prompts=prompts[:10], chosen=resp[:10], chosen_mask=mask[:10],
                   rejected=resp[:10], rejected_mask=mask[:10])
    got = diagnose.task_diagnostic(cfg, params, (seqs, attn, lengths), offline, "mode", 3.0, P)
    # log π_ref as the tier computes it (checked against the sampler above): bin edges of the
    # overlap are sensitive to its last float bits
    logp = diagnose.sequence_ref_logps(cfg, params, prompts, resp, mask)
    gold = -np.abs(lengths.reshape(-1) - 3.0)
    r = (gold - gold.min()) / (gold.max() - gold.min())
    want = modeseek.diagnose_samples(logp, r, beta=0.1, data_ref_logps=np.concatenate(
        [logp[:10], logp[:10]]))
    for key, value in want.items():
        np.testing.assert_allclose(got[f"diagnose_{key}"], float(value), rtol=1e-4, atol=1e-4,
                                   err_msg=key)
    assert got["diagnose_samples"] == 48 and got["diagnose_data"] == 20
    assert got["diagnose_recommendation"] == modeseek.recommend(
        {k: float(v) for k, v in want.items()}).method_class
    lines = diagnose.report_lines({"mode": got, "other": {"mode": 3}})
    assert sum(line.startswith("| mode |") for line in lines) == 1
    assert not any(line.startswith("| other |") for line in lines)
    assert diagnose.report_lines({"other": {}}) == []
