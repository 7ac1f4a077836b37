"""The reward interface: inputs, the Reward object, and checks on what a reward returns.

    RewardInputs(prompt_tokens, prompt_mask, response_tokens, response_mask, prompts=None,
                 completions=None, columns=None)
    Reward(name, kind, needs_text, compute, params=None, score_fn=None, response_fn=None,
           tokenizer=None)
        reward(inputs, params=None) -> np.ndarray float32 [P, N]; `last_seconds` after a call
        compute(inputs, params) -> [P, N]-sized values (host); params: the loaded weights of
        model rewards; score_fn(params, tokens [B, S], mask [B, S]) -> [B] and
        response_fn(response_mask [..., Lr]) -> [...]: jit-able device forms, where they exist;
        tokenizer decodes text for rewards with needs_text when the inputs carry none
    check_scores(name, scores, (P, N)) -> float32 [P, N]      RewardError on bad size, NaN/inf
    decode_inputs(inputs, tokenizer) -> inputs with prompts/completions decoded where missing
    RewardError   a reward could not be built, or returned bad values; names the reward

Built by `llm.rewards.build_reward` (see there for the kinds).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class RewardError(ValueError):
    """A reward could not be built, or returned bad values; the message names the reward."""


class RewardInputs(NamedTuple):
    """One batch to score: P prompts × N responses.

    prompt_tokens [P, Lp] int32 left-padded, prompt_mask [P, Lp] bool; response_tokens
    [P, N, Lr] int32 right-padded, response_mask [P, N, Lr] bool (1 up to and including EOS);
    prompts: P decoded prompts; completions: [P][N] decoded completions; columns: per-prompt
    dataset columns {name: list of P values} passed on to user functions (e.g. "answer")."""

    prompt_tokens: Any
    prompt_mask: Any
    response_tokens: Any
    response_mask: Any
    prompts: list[str] | None = None
    completions: list[list[str]] | None = None
    columns: dict[str, list] | None = None


@dataclasses.dataclass(eq=False)
class Reward:
    """A reward: `reward(inputs, params=None) -> [P, N] float32` (see the module docstring)."""

    name: str
    kind: str
    needs_text: bool
    compute: Callable[[RewardInputs, Any], Any]
    params: Any = None
    score_fn: Callable | None = None
    response_fn: Callable | None = None
    tokenizer: Any = None
    last_seconds: float = 0.0

    def __call__(self, inputs: RewardInputs, params=None) -> np.ndarray:
        start = time.perf_counter()
        P, N = np.shape(inputs.response_mask)[:2]
        if self.needs_text:
            inputs = decode_inputs(inputs, self.tokenizer, name=self.name)
            if len(inputs.prompts) != P or any(len(row) != N for row in inputs.completions):
                raise RewardError(f"reward {self.name!r}: {len(inputs.prompts)} prompts and "
                                  f"completions per prompt {[len(r) for r in inputs.completions]}"
                                  f" do not match the tokens' P={P}, N={N}")
        try:
            scores = self.compute(inputs, self.params if params is None else params)
        except RewardError:
            raise
        except Exception as e:
            raise RewardError(f"reward {self.name!r} ({self.kind}) raised "
                              f"{type(e).__name__}: {e}") from e
        self.last_seconds = time.perf_counter() - start
        return check_scores(self.name, scores, (P, N))


def check_scores(name: str, scores, shape: tuple[int, int]) -> np.ndarray:
    """`scores` as float32 [P, N]; RewardError naming the reward on wrong size or NaN/inf."""
    try:
        array = np.asarray(scores, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise RewardError(f"reward {name!r}: returned values that are not numbers ({e})") from None
    if array.size != shape[0] * shape[1]:
        raise RewardError(f"reward {name!r}: returned {array.size} values of shape "
                          f"{array.shape}, expected {shape[0] * shape[1]} (P={shape[0]} prompts "
                          f"× N={shape[1]} samples)")
    array = array.reshape(shape)
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        p, n = bad[0]
        raise RewardError(f"reward {name!r}: {len(bad)} non-finite values, first "
                          f"{array[p, n]} at prompt {p}, sample {n}")
    return array


def decode_inputs(inputs: RewardInputs, tokenizer, *, name: str = "reward") -> RewardInputs:
    """`inputs` with prompts/completions decoded from the tokens where they are missing
    (`tokenizer.decode(ids[mask], skip_special_tokens=True)`, so EOS is dropped)."""
    if inputs.prompts is not None and inputs.completions is not None:
        return inputs
    if tokenizer is None:
        raise RewardError(f"reward {name!r} reads text: pass RewardInputs.prompts/completions "
                          "or build it with a tokenizer")
    prompts, completions = inputs.prompts, inputs.completions
    if prompts is None:
        prompts = [tokenizer.decode(t[m]) for t, m in zip(np.asarray(inputs.prompt_tokens),
                                                          np.asarray(inputs.prompt_mask, bool))]
    if completions is None:
        completions = [[tokenizer.decode(t[m]) for t, m in zip(ts, ms)]
                       for ts, ms in zip(np.asarray(inputs.response_tokens),
                                         np.asarray(inputs.response_mask, bool))]
    return inputs._replace(prompts=prompts, completions=completions)
