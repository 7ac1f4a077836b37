"""The didactic bandit of Tajwar et al. (ICML 2024, §4 of ../shared/PAPER.md).

100 actions; the reference policy is tanh(c), c ~ Cauchy(loc=−0.7, scale=0.4), binned into
100 equal bins of [−1, 1] (bin k = [−1 + 0.02k, −1 + 0.02(k + 1))). Its exact bin masses follow
from the Cauchy CDF F(x) = ½ + arctan((x − loc)/scale)/π:

    π_ref(k) = F(atanh(e_{k+1})) − F(atanh(e_k)),   e_k = −1 + 2k/A,   atanh(±1) = ±∞.

Rewards are Gaussian bumps r(a) = exp(−((a − peak)/width)²) with maximum 1: R1 peaks at 70
(where π_ref is small), R2 at 20 (near π_ref's interior mode). Prompts are uniform 100-dim
vectors that the reward ignores (they give the policy network an input).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_ACTIONS = 100
PROMPT_DIM = 100

# name -> (peak, width)
REWARDS = {
    "R1": (70, 10.0),
    "R2": (20, 10.0),
    "R1_w20": (70, 20.0),
    "R1_w30": (70, 30.0),
}


def reference_policy(num_actions: int = NUM_ACTIONS, loc: float = -0.7,
                     scale: float = 0.4) -> np.ndarray:
    """Exact bin masses [A] (float64, sums to 1) of tanh(Cauchy(loc, scale)) over [−1, 1]."""
    if num_actions < 2:
        raise ValueError(f"num_actions must be >= 2, got {num_actions}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    edges = np.linspace(-1.0, 1.0, num_actions + 1)
    with np.errstate(divide="ignore"):
        x = np.arctanh(edges)  # ±inf at the ends
    cdf = 0.5 + np.arctan((x - loc) / scale) / np.pi
    return np.diff(cdf)


def sampled_reference_policy(seed: int = 0, num_samples: int = 10_000,
                             num_actions: int = NUM_ACTIONS, loc: float = -0.7,
                             scale: float = 0.4) -> np.ndarray:
    """The authors' variant: a normalised histogram of `num_samples` draws (for comparison).

    Empty bins get probability 0, so log π_ref can be −inf there; the exact masses avoid that.
    """
    rng = np.random.default_rng(seed)
    c = loc + scale * rng.standard_cauchy(num_samples)
    counts, _ = np.histogram(np.tanh(c), bins=num_actions, range=(-1.0, 1.0))
    return counts / counts.sum()


def bump_reward(peak: float, width: float, num_actions: int = NUM_ACTIONS) -> np.ndarray:
    """r(a) = exp(−((a − peak)/width)²) over actions 0..A−1, [A] float64."""
    if width <= 0:
        raise ValueError(f"reward width must be > 0, got {width}")
    a = np.arange(num_actions, dtype=np.float64)
    return np.exp(-np.square((a - peak) / width))


def reward_table(name: str, num_actions: int = NUM_ACTIONS) -> np.ndarray:
    """The named reward as an array over actions; unknown names list the known ones."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(REWARDS)}")
    return bump_reward(*REWARDS[name], num_actions=num_actions)


def reward_peak(name: str) -> int:
    return REWARDS[name][0]


def sample_prompts(key, num_prompts: int, dim: int = PROMPT_DIM):
    """Prompts x ~ U[0, 1]^dim, [num_prompts, dim] float32."""
    return jax.random.uniform(key, (num_prompts, dim), jnp.float32)


def optimal_policy(ref_probs, rewards, beta):
    """π*(a) ∝ π_ref(a) · exp(r(a)/β), the optimum of KL-regularised reward maximisation."""
    logits = np.log(ref_probs) + np.asarray(rewards) / beta
    logits -= logits.max()
    p = np.exp(logits)
    return p / p.sum()
