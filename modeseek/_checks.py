"""Input checks shared by the losses: fail early, naming the argument."""

from __future__ import annotations

import numpy as np
from jax import core


def is_concrete(value) -> bool:
    """True when `value` is a Python/NumPy number or a non-traced array (checkable now)."""
    return not isinstance(value, core.Tracer)


def check_positive(name: str, value) -> None:
    """Raise ValueError if a concrete hyperparameter is not > 0 (traced values are the caller's)."""
    if value is None:
        raise ValueError(f"{name} must be a positive number, got None")
    if is_concrete(value):
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be > 0, got {value!r}")


def check_in_range(name: str, value, low: float, high: float) -> None:
    """Raise ValueError if a concrete value lies outside [low, high)."""
    if is_concrete(value):
        arr = np.asarray(value)
        if np.any(arr < low) or np.any(arr >= high):
            raise ValueError(f"{name} must lie in [{low}, {high}), got {value!r}")


def check_same_shape(**arrays) -> None:
    """Raise ValueError naming every argument when the shapes differ."""
    shapes = {name: tuple(np.shape(a)) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{name}{list(s)}" for name, s in shapes.items())
        raise ValueError(f"shape mismatch: {listing}")


def check_rank_at_least(name: str, array, rank: int) -> None:
    if np.ndim(array) < rank:
        raise ValueError(f"{name} must have at least {rank} dims, got shape {np.shape(array)}")
