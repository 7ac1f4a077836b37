"""The algorithm taxonomy as data (Tajwar et al., ICML 2024, Table 1).

Each algorithm is a record: where its samples come from (offline set or the current policy),
its default sample reuse T (gradient steps per sampled batch), whether its loss has a
negative gradient (explicitly pushes some responses' likelihood down), and its group
objective (`modeseek.objectives`). Reports group runs by these flags, so the paper's
on-policy × negative-gradient 2×2 is read straight off the table.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from modeseek import objectives as obj


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    on_policy: bool
    reuse: int
    negative_gradient: bool
    objective: Callable
    description: str
    needs: tuple[str, ...] = ()

    @property
    def cell(self) -> str:
        """The algorithm's cell of the paper's 2×2."""
        return (("on-policy" if self.on_policy else "offline") + " / "
                + ("negative gradient" if self.negative_gradient else "no negative gradient"))


_P = functools.partial
_ALGORITHMS = (
    Algorithm("pref_ft", False, 1, False, obj.pref_ft_objective,
              "SFT on the preferred response of each offline pair"),
    Algorithm("offline_dpo", False, 1, True, obj.dpo_objective,
              "DPO on offline pairs", ("beta",)),
    Algorithm("offline_ipo", False, 1, True, obj.ipo_objective,
              "IPO on offline pairs", ("tau",)),
    Algorithm("offline_bofn", False, 1, False, obj.best_of_n_objective,
              "behaviour cloning of the best of N offline samples"),
    Algorithm("offline_rwr", False, 1, False, obj.rwr_objective,
              "reward-weighted regression on offline samples", ("rwr_beta",)),
    Algorithm("onpolicy_bofn", True, 15, False, obj.best_of_n_objective,
              "Best-of-N / ReST: clone the best of N on-policy samples"),
    Algorithm("onpolicy_bofn_neg", True, 15, True,
              _P(obj.best_of_n_objective, negative="all_worse"),
              "Best-of-N plus c·log π of every worse sample (negative gradient)"),
    Algorithm("onpolicy_rwr", True, 15, False, obj.rwr_objective,
              "reward-weighted regression on on-policy samples", ("rwr_beta",)),
    Algorithm("reinforce", True, 1, True, obj.reinforce_objective,
              "REINFORCE, per-prompt z-scored rewards as advantages"),
    Algorithm("rloo", True, 1, True, _P(obj.reinforce_objective, baseline="rloo"),
              "REINFORCE with a leave-one-out baseline"),
    Algorithm("reinforce_nonneg", True, 1, False,
              _P(obj.reinforce_objective, nonnegative=True),
              "REINFORCE ablation: advantages shifted ≥ 0, so no negative gradient"),
    Algorithm("ppo", True, 15, True, obj.ppo_objective,
              "PPO clipped surrogate vs the sampling-time policy, KL-shaped reward",
              ("clip_eps",)),
    Algorithm("onpolicy_dpo", True, 15, True, obj.dpo_objective,
              "DPO on all ranked pairs of on-policy samples", ("beta",)),
    Algorithm("onpolicy_ipo", True, 15, True, obj.ipo_objective,
              "IPO on all ranked pairs of on-policy samples", ("tau",)),
)
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in _ALGORITHMS}

DEFAULT_HPARAMS = {
    "beta": 0.1, "tau": 0.05, "threshold": 0.0, "label_smoothing": 0.0, "clip_eps": 0.2,
    "kl_coef": 0.0, "negative_coef": 1.0, "rwr_beta": 1.0, "weight_clip": 10.0,
}


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
