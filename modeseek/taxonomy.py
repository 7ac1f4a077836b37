"""The algorithm taxonomy as data (Tajwar et al., ICML 2024, Table 1).

Each algorithm is a record: where its samples come from (offline set or the current policy),
its default sample reuse T (gradient steps per sampled batch), whether its loss has a
negative gradient (explicitly pushes some responses' likelihood down), its group objective
(`modeseek.objectives`, on [P, N] sequence log-probs) and, for token-level algorithms (PPO),
its token objective (`modeseek.ppo`, on [P, N, S] per-token log-probs and values; such
algorithms train a value function). Reports group runs by these flags, so the paper's
on-policy × negative-gradient 2×2 is read straight off the table. Tiers read these fields,
never an algorithm's name.

Hyperparameters have one home: `HPARAMS` (default and valid range of every numeric
hyperparameter) and `resolve_hparams`, which every tier and config calls to fill defaults and
validate; `DEFAULT_HPARAMS` is the defaults alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Callable

import numpy as np

from modeseek import objectives as obj
from modeseek import ppo
from modeseek._checks import is_concrete


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    on_policy: bool
    reuse: int
    negative_gradient: bool
    objective: Callable
    description: str
    needs: tuple[str, ...] = ()
    token_objective: Callable | None = None

    @property
    def token_level(self) -> bool:
        """True when the algorithm trains on per-token log-probs with a value function."""
        return self.token_objective is not None

    @property
    def cell(self) -> str:
        """The algorithm's cell of the paper's 2×2."""
        return (("on-policy" if self.on_policy else "offline") + " / "
                + ("negative gradient" if self.negative_gradient else "no negative gradient"))


_P = functools.partial
_ALGORITHMS = (
    Algorithm("pref_ft", False, 1, False, obj.pref_ft_objective,
              "SFT on the preferred response of each offline pair", ("threshold",)),
    Algorithm("offline_dpo", False, 1, True, obj.dpo_objective,
              "DPO on offline pairs", ("beta", "label_smoothing", "threshold")),
    Algorithm("offline_ipo", False, 1, True, obj.ipo_objective,
              "IPO on offline pairs", ("tau", "threshold")),
    Algorithm("offline_bofn", False, 1, False, obj.best_of_n_objective,
              "behaviour cloning of the best of N offline samples"),
    Algorithm("offline_rwr", False, 1, False, obj.rwr_objective,
              "reward-weighted regression on offline samples", ("rwr_beta", "weight_clip")),
    Algorithm("onpolicy_bofn", True, 15, False, obj.best_of_n_objective,
              "Best-of-N / ReST: clone the best of N on-policy samples"),
    Algorithm("onpolicy_bofn_neg", True, 15, True,
              _P(obj.best_of_n_objective, negative="all_worse"),
              "Best-of-N plus c·log π of every worse sample (negative gradient)",
              ("negative_coef",)),
    Algorithm("onpolicy_rwr", True, 15, False, obj.rwr_objective,
              "reward-weighted regression on on-policy samples", ("rwr_beta", "weight_clip")),
    Algorithm("reinforce", True, 1, True, obj.reinforce_objective,
              "REINFORCE, per-prompt z-scored rewards as advantages"),
    Algorithm("rloo", True, 1, True, _P(obj.reinforce_objective, baseline="rloo"),
              "REINFORCE with a leave-one-out baseline"),
    Algorithm("reinforce_nonneg", True, 1, False,
              _P(obj.reinforce_objective, nonnegative=True),
              "REINFORCE ablation: advantages shifted ≥ 0, so no negative gradient"),
    Algorithm("ppo", True, 15, True, obj.ppo_objective,
              "PPO: clipped surrogate vs the sampling-time policy, KL-shaped reward, GAE with "
              "a value function (token-level; one-step tasks use its sequence form)",
              ("clip_eps", "kl_coef", "vf_coef", "value_clip", "gamma", "gae_lambda",
               "kl_target", "kl_horizon"), token_objective=ppo.ppo_token_objective),
    Algorithm("onpolicy_dpo", True, 15, True, obj.dpo_objective,
              "DPO on all ranked pairs of on-policy samples",
              ("beta", "label_smoothing", "threshold")),
    Algorithm("onpolicy_ipo", True, 15, True, obj.ipo_objective,
              "IPO on all ranked pairs of on-policy samples", ("tau", "threshold")),
)
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in _ALGORITHMS}

# name: (default, low, high, low inclusive): the one place for defaults and valid ranges
HPARAMS: dict[str, tuple[float, float, float, bool]] = {
    "beta": (0.1, 0.0, math.inf, False),          # DPO/SLiC inverse temperature
    "tau": (0.05, 0.0, math.inf, False),          # IPO regulariser (target margin 1/(2τ))
    "threshold": (0.0, 0.0, math.inf, True),      # reward gap a ranked pair must exceed
    "label_smoothing": (0.0, 0.0, 0.5, True),     # cDPO flip probability, in [0, 0.5)
    "negative_coef": (1.0, 0.0, math.inf, True),  # Best-of-N negative term weight
    "rwr_beta": (1.0, 0.0, math.inf, False),      # RWR temperature
    "weight_clip": (10.0, 0.0, math.inf, False),  # RWR weight cap
    "clip_eps": (0.2, 0.0, math.inf, False),      # PPO ratio clip ε
    "kl_coef": (0.05, 0.0, math.inf, True),       # PPO KL-to-reference reward shaping (initial)
    "vf_coef": (0.1, 0.0, math.inf, True),        # PPO value-loss weight
    "value_clip": (0.2, 0.0, math.inf, False),    # PPO value clip
    "gamma": (1.0, 0.0, 1.0, True),               # GAE discount, in [0, 1]
    "gae_lambda": (0.95, 0.0, 1.0, True),         # GAE λ, in [0, 1]
    "kl_target": (0.0, 0.0, math.inf, True),      # adaptive KL target; 0 keeps kl_coef fixed
    "kl_horizon": (10000.0, 0.0, math.inf, False),  # adaptive KL horizon (samples)
}
_CLOSED_HIGH = ("gamma", "gae_lambda")
DEFAULT_HPARAMS = {name: spec[0] for name, spec in HPARAMS.items()}


def resolve_hparams(overrides=None, *, where: str = "hparams") -> dict:
    """`DEFAULT_HPARAMS` updated with `overrides`, validated: an unknown name fails suggesting
    the closest known one, a concrete value outside its range fails naming `where`.name
    (traced values are the caller's: sweeps validate their grid before tracing)."""
    overrides = dict(overrides or {})
    for name in overrides:
        if name not in HPARAMS:
            close = difflib.get_close_matches(name, HPARAMS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}.{name}: unknown hyperparameter{hint} known: "
                             f"{', '.join(sorted(HPARAMS))}")
    hparams = {**DEFAULT_HPARAMS, **overrides}
    for name, value in hparams.items():
        _, low, high, low_ok = HPARAMS[name]
        if not is_concrete(value):
            continue
        v = np.asarray(value, np.float64)
        high_ok = name in _CLOSED_HIGH
        ok = (np.all(np.isfinite(v))
              and np.all(v >= low if low_ok else v > low)
              and np.all(v <= high if high_ok else v < high))
        if not ok:
            lo, hi = ("[" if low_ok else "("), ("]" if high_ok else ")")
            raise ValueError(f"{where}.{name} must lie in {lo}{low}, {high}{hi}, got {value!r}")
    return hparams


def get_algorithm(name: str) -> Algorithm:
    """The record for `name`; unknown names fail with the list of known ones."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise ValueError(f"unknown algorithm {name!r}; known algorithms: {known}") from None


def taxonomy_table() -> str:
    """The taxonomy as a Markdown table."""
    rows = ["| algorithm | samples | reuse T | negative gradient | description |",
            "|---|---|---|---|---|"]
    for a in _ALGORITHMS:
        rows.append(f"| {a.name} | {'on-policy' if a.on_policy else 'offline'} | {a.reuse} | "
                    f"{'yes' if a.negative_gradient else 'no'} | {a.description} |")
    return "\n".join(rows)
