"""A fixed random offline-DPO batch shared by the sharding and multi-process tests (imported
by their child processes too, which run with tests/ on sys.path)."""

import numpy as np


def random_pair_batch(seed=0, batch=8, prompt_len=6, response_len=5):
    """Numpy batch: left-padded prompts, right-padded chosen/rejected, cached ref log-probs."""
    rng = np.random.default_rng(seed)
    B, P, T = batch, prompt_len, response_len
    return {
        "prompt_tokens": rng.integers(0, 256, (B, P)).astype(np.int32),
        "prompt_mask": np.arange(P)[None] >= rng.integers(0, 3, (B, 1)),
        "chosen_tokens": rng.integers(0, 256, (B, T)).astype(np.int32),
        "rejected_tokens": rng.integers(0, 256, (B, T)).astype(np.int32),
        "chosen_mask": np.arange(T)[None] < rng.integers(2, T + 1, (B, 1)),
        "rejected_mask": np.arange(T)[None] < rng.integers(2, T + 1, (B, 1)),
        "ref_logps": (rng.normal(size=(B, 2)) * 3 - 20).astype(np.float32),
    }
