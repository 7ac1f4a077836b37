"""A user reward module whose own import fails (tests/test_rewards.py checks the message)."""

import modeseek_no_such_dependency  # noqa: F401


def score(prompts, completions, **kwargs):
    return [0.0] * len(completions)
