"""Grain loaders of fixed-shape tokenised batches with checkpointable iterator state.

Pipeline (grain ``MapDataset``, all index-based, so the iterator state is a few integers)::

    valid row indices  --shard-->  this process's rows  --shuffle(seed)-->  --repeat(num_epochs)-->
    --map(tokenise)-->  --batch(B, drop_remainder)-->  iterator (get_state / set_state)

* Validation pass: at construction every row of the split is tokenised once (see
  :class:`llm.data.encoding.Encoder`); bad rows raise :class:`BadRowError` naming file:line and
  field, or with ``skip_bad_rows=True`` are left out and counted in the returned stats. This is
  what makes shards equal-sized and batches never fail mid-run.
* Sharding: the valid rows are split round-robin (row i goes to shard i mod shard_count) after
  truncating to a multiple of shard_count when ``shard_options.drop_remainder`` (the default of
  ``grain.sharding.ShardByJaxProcess(drop_remainder=True)``, used when no options are given), so
  every process sees disjoint rows and the same number of batches.
* Shuffling is a fresh permutation per epoch (grain folds the epoch into the seed); the last
  partial batch of the stream is dropped so every batch has the same shape (no recompiles).

Batch dict (numpy): ``prompt_tokens [B, P] int32`` (left-padded), ``prompt_mask [B, P] bool``,
``row_index [B] int64`` (row in the split), and for pairs ``chosen_tokens``, ``rejected_tokens
[B, T] int32`` (right-padded), ``chosen_mask``, ``rejected_mask [B, T] bool`` and, when the data
has scores, ``chosen_score``, ``rejected_score [B] float32``.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import numpy as np
from absl import logging

from llm.data.encoding import Encoder
from llm.data.records import BadRowError, read_rows, record_skip


def _open_source(source, split: str, prompts_only: bool, skip_bad_rows: bool):
    """(rows, kind, has_scores, read stats) for a prepared TFDS dir, a file, or row dicts."""
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if os.path.isdir(path):
            from llm.data.tfds_builder import load_prepared

            rows, meta = load_prepared(path, split)
            return rows, meta["kind"], bool(meta["has_scores"]), meta["stats"].get(split, {})
        kind = "prompts" if prompts_only else "pairs"
        rows, stats = read_rows(path, kind=kind, skip_bad_rows=skip_bad_rows)
        return rows, kind, stats["has_scores"], stats
    rows = list(source)
    kind = "pairs" if rows and "chosen" in rows[0] else "prompts"
    has_scores = bool(rows) and all("chosen_score" in r for r in rows)
    return rows, kind, has_scores, {}


def _shard(indices: np.ndarray, shard_options: grain.sharding.ShardOptions) -> np.ndarray:
    count, index = shard_options.shard_count, shard_options.shard_index
    if not 0 <= index < count:
        raise ValueError(f"shard_index {index} not in [0, {count})")
    if shard_options.drop_remainder:
        indices = indices[: len(indices) // count * count]
    return indices[index::count]


def make_loader(
    source,
    tokenizer,
    *,
    batch_size: int,
    max_prompt_len: int,
    max_response_len: int | None = None,
    split: str = "train",
    prompts_only: bool = False,
    shuffle: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_options: grain.sharding.ShardOptions | None = None,
    skip_bad_rows: bool = False,
    truncate_prompt: bool = True,
    truncate_response: bool = True,
    use_chat_template: bool | None = None,
    append_eos: bool = True,
    system_prompt: str = "",
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
) -> tuple[grain.DatasetIterator, dict[str, Any]]:
    """Builds a checkpointable iterator of fixed-shape batches (see module docstring).

    Args:
      source: a dataset directory returned by ``prepare_tfds``, a ``.jsonl``/``.parquet`` file
        (read in memory), or a sequence of normalised row dicts.
      tokenizer: see :mod:`llm.data.encoding` for the interface.
      batch_size: B, per process.
      max_prompt_len: P. max_response_len: T (required for pairs).
      split: split of a prepared dataset.
      prompts_only: yield only prompts (also from preference data), for on-policy runs.
      shuffle, seed: per-epoch permutation of this process's rows.
      num_epochs: passes over the data; ``None`` repeats forever.
      shard_options: defaults to ``grain.sharding.ShardByJaxProcess(drop_remainder=True)``.
      skip_bad_rows: skip and count bad rows (reading and tokenisation) instead of raising.
      truncate_prompt, truncate_response, use_chat_template, append_eos, system_prompt: see
        ``Encoder``.
      num_threads, prefetch_buffer_size: grain read threads and prefetch depth.

    Returns:
      (iterator, stats): ``next(iterator)`` is a batch dict; ``iterator.get_state()`` /
      ``set_state(state)`` resume exactly (the state is a small JSON-able dict; in orbax use
      ``grain.checkpoint.CheckpointSave(iterator)`` / ``CheckpointRestore(iterator)``).
      stats holds the read stats (``read``), the tokenisation pass's ``rows_checked``,
      ``rows_kept``, ``rows_skipped``, ``skipped_by_reason``, and ``rows_in_shard``,
      ``batches_per_epoch``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    rows, kind, has_scores, read_stats = _open_source(source, split, prompts_only, skip_bad_rows)
    if kind == "prompts" and not prompts_only:
        raise ValueError(f"{source}: holds prompts only; pass prompts_only=True")
    pairs = not prompts_only
    encoder = Encoder(tokenizer, max_prompt_len=max_prompt_len, max_response_len=max_response_len,
                      pairs=pairs, with_scores=pairs and has_scores,
                      truncate_prompt=truncate_prompt, truncate_response=truncate_response,
                      use_chat_template=use_chat_template, append_eos=append_eos,
                      system_prompt=system_prompt)
    stats = {"kind": "pairs" if pairs else "prompts", "has_scores": encoder.with_scores,
             "read": read_stats, "rows_checked": len(rows), "rows_kept": 0, "rows_skipped": 0,
             "skipped_by_reason": {}}
    valid = []
    for i in range(len(rows)):
        try:
            encoder(rows[i])
        except BadRowError as e:
            if not skip_bad_rows:
                raise
            record_skip(stats, e)
            continue
        valid.append(i)
    stats["rows_kept"] = len(valid)
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    indices = _shard(np.asarray(valid, np.int64), shard_options)
    stats["rows_in_shard"] = len(indices)
    stats["batches_per_epoch"] = len(indices) // batch_size
    if len(indices) < batch_size:
        raise ValueError(f"{source}: {len(indices)} rows in shard {shard_options.shard_index} < "
                         f"batch_size {batch_size}")
    logging.info("loader %s[%s]: %s", source, split, stats)

    def encode(i):
        return {**encoder(rows[int(i)]), "row_index": np.int64(i)}

    ds = grain.MapDataset.source(indices)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).map(encode).batch(batch_size, drop_remainder=True)
    read_options = grain.ReadOptions(num_threads=num_threads,
                                     prefetch_buffer_size=prefetch_buffer_size)
    return iter(ds.to_iter_dataset(read_options)), stats
