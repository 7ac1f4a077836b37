"""User reward functions for tests/test_rewards.py, written in TRL's reward-function convention
`fn(prompts: list[str], completions: list[str], **kwargs) -> list[float]`."""

import math

import numpy as np

CALLS = []
NOT_CALLABLE = 3.0


def count_a(prompts, completions, **kwargs):
    """Occurrences of "a" in the completion, minus a tenth of the prompt's length."""
    CALLS.append({"prompts": list(prompts), "completions": list(completions), **kwargs})
    return [c.count("a") - 0.1 * len(p) for p, c in zip(prompts, completions)]


def constant(prompts, completions, **kwargs):
    """The same reward for every completion: no pair can be formed."""
    return [1.0] * len(completions)


def answer_in_completion(prompts, completions, answer, **kwargs):
    """1.0 when the dataset column `answer` appears in the completion (TRL passes columns)."""
    return [float(a in c) for c, a in zip(completions, answer)]


def lazy_lengths(prompts, completions, **kwargs):
    """A generator of numpy scalars is fine too."""
    return (np.float64(len(c)) for c in completions)


def one_short(prompts, completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def with_nan(prompts, completions, **kwargs):
    return [math.nan] + [0.0] * (len(completions) - 1)


def with_none(prompts, completions, **kwargs):
    return [None] * len(completions)


def raises(prompts, completions, **kwargs):
    raise RuntimeError("the verifier crashed")
