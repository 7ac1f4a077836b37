"""A user reward (TRL convention) for tests/test_llm_train.py: fine on odd calls, one NaN on
even calls (the run must stop at its second iteration, naming the reward)."""

import math

CALLS = [0]


def nan_on_second_call(prompts, completions, **kwargs):
    CALLS[0] += 1
    scores = [float(len(c)) for c in completions]
    if CALLS[0] % 2 == 0:
        scores[0] = math.nan
    return scores
