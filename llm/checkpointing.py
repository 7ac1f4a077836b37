"""Orbax checkpoints of a run: train state, RNG, data iterator state and loop counters.

Layout (one orbax `CheckpointManager` step directory per saved step):

    <run>/checkpoints/<step>/state/    params, opt_state, step, rng (key data) — sharded arrays
                            /data/     grain iterator state (per process)
                            /extra/    JSON: loop counters (iteration, adaptive KL coef, ...)

Saves are synchronous (a checkpoint is complete when `save` returns, so a SIGTERM handler can
save and exit). Restore puts every array straight into the shardings of the abstract state
passed in. The caller checks metrics for NaN/inf *before* saving, so a bad step never
overwrites the last good checkpoint (`max_to_keep` older checkpoints are kept as well).

Final parameters of a stage are saved separately (`save_params` / `load_params`) so a later
stage (e.g. on-policy training that reads the reward model) restores only what it needs.
"""

from __future__ import annotations

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from llm import run_folder


def abstract_like(tree):
    """ShapeDtypeStructs with the shardings of `tree`'s arrays (the restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


class RunCheckpointer:
    """Save/restore (state, rng, data iterator, extra JSON) every `every` steps."""

    def __init__(self, directory: str, *, every: int, max_to_keep: int = 2):
        self.every = int(every)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=False,
                                               create=True)
        self.manager = ocp.CheckpointManager(run_folder.absolute(directory), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state, rng, iterator=None, extra: dict | None = None) -> None:
        # the key as host numpy: a single-device array cannot be saved across hosts
        rng_data = np.asarray(jax.device_get(jax.random.key_data(rng)))
        items = {"state": ocp.args.StandardSave({"train": state, "rng": rng_data}),
                 "extra": ocp.args.JsonSave(dict(extra or {}))}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def restore(self, state_like, rng_like, iterator=None, step: int | None = None):
        """(state, rng, extra) of `step` (default: latest); the iterator is restored in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.manager.directory}: no checkpoint to resume from")
        target = {"train": abstract_like(state_like),
                  "rng": np.asarray(jax.device_get(jax.random.key_data(rng_like)))}
        items = {"state": ocp.args.StandardRestore(target), "extra": ocp.args.JsonRestore()}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        rng = jax.random.wrap_key_data(np.asarray(restored["state"]["rng"], np.uint32))
        return restored["state"]["train"], rng, dict(restored["extra"] or {})

    def close(self) -> None:
        self.manager.close()


def save_params(directory: str, params) -> None:
    """Write a parameter tree (sharded arrays are written shard by shard)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(run_folder.absolute(directory), params, force=True)
    checkpointer.wait_until_finished()


def load_params(directory: str, abstract_params):
    """Read a tree written by `save_params` into the shardings of `abstract_params`
    (ShapeDtypeStructs with shardings, e.g. from `jax.eval_shape` + `tree_shardings`)."""
    return ocp.StandardCheckpointer().restore(run_folder.absolute(directory), abstract_params)
