"""Multi-host start-up: `jax.distributed.initialize` from flags, the environment, or the
cluster's own auto-detection.

Resolution order for (coordinator_address, num_processes, process_id):
  1. explicit values (the config's `distributed.*`, i.e. `--config.distributed.coordinator=...`);
  2. the environment: MODESEEK_COORDINATOR (host:port), MODESEEK_NUM_PROCESSES,
     MODESEEK_PROCESS_ID — what `launch/slurm_gpu.sh` exports from SLURM's variables;
  3. `auto=True`: `jax.distributed.initialize()` with no arguments, which JAX resolves itself
     on Cloud TPU pods and under SLURM;
otherwise the run is single-process and nothing is initialised. The coordinator listens only on
the address given (DESIGN.md: a multi-host coordinator listens only where the config says).
"""

from __future__ import annotations

import os

import jax

_ENV = ("MODESEEK_COORDINATOR", "MODESEEK_NUM_PROCESSES", "MODESEEK_PROCESS_ID")


def resolve(coordinator: str = "", num_processes: int = 0, process_id: int = -1):
    """(coordinator, num_processes, process_id) or None for a single-process run."""
    if not coordinator and os.environ.get(_ENV[0]):
        coordinator = os.environ[_ENV[0]]
        num_processes = int(os.environ.get(_ENV[1], num_processes))
        process_id = int(os.environ.get(_ENV[2], process_id))
    if not coordinator:
        return None
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"distributed: coordinator {coordinator!r} needs num_processes >= 1 "
                         f"and 0 <= process_id < num_processes, got {num_processes}, "
                         f"{process_id}")
    return coordinator, num_processes, process_id


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1, *,
               auto: bool = False, timeout_s: int = 300) -> bool:
    """Initialise jax.distributed when asked to; returns whether it was initialised."""
    resolved = resolve(coordinator, num_processes, process_id)
    if resolved is not None:
        address, n, pid = resolved
        jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid,
                                   initialization_timeout=timeout_s)
        return True
    if auto:
        jax.distributed.initialize()
        return True
    return False


def is_main() -> bool:
    return jax.process_index() == 0
