"""Input checks shared by the losses, the sampler and the config edges of every tier: fail
early, naming the argument (and, for unknown names, the closest known one)."""

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


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_sampling_args(*, temperature, top_k, top_p, max_new_tokens, max_len=None) -> None:
    """One-line ValueError naming the first bad sampling argument: temperature ≥ 0 and finite
    (0 = greedy), top_k an integer ≥ 0 (0 = off), top_p in (0, 1] (1 = off), max_new_tokens an
    integer ≥ 1 and, given the model context max_len, max_new_tokens < max_len (room for at
    least one prompt token)."""
    if not is_concrete(temperature) or not is_concrete(top_p):
        return
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not is_int(top_k) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not (np.isfinite(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] (1 = off), got {top_p!r}")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if max_len is not None and max_new_tokens >= max_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                         f"model's context of {max_len} tokens")


def suggest_key(unknown: str, known) -> str:
    """' (did you mean 'x'?)' for the closest known name, else the known names listed."""
    import difflib

    known = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(unknown), known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    listing = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
    return f" (known: {listing})"


def check_known_keys(where: str, given, known) -> None:
    """ValueError naming the first key of `given` not in `known`, with the closest known one."""
    known = list(known)
    for key in given:
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r}{suggest_key(key, known)}")


def check_new_run_folder(path: str, flag: str = "--out") -> None:
    """Refuse a run folder that already holds a run (its config.json): results are never
    overwritten. Raises FileExistsError naming the flag."""
    from etils import epath  # local and object-store (gs://) folders alike

    if (epath.Path(path) / "config.json").exists():
        raise FileExistsError(f"{flag}={path} already holds a run (config.json); runs are never "
                              f"overwritten: choose a new {flag}")
