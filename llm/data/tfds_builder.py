"""Preparing local JSONL/Parquet rows once into a TFDS array_record dataset, and reading it back.

``prepare_tfds`` reads the files with :func:`llm.data.records.read_rows` (same validation, same
``skip_bad_rows`` semantics), then writes them with a ``tfds.core.GeneratorBasedBuilder`` in
``file_format="array_record"`` under ``data_dir/local_preference_data/<name>/1.0.0``. Rows keep
their file order (TFDS shuffling is disabled; shuffling is the loader's job). Reading back uses
``tfds.builder_from_directory(...).as_data_source(split)``: random access, no TensorFlow.

Stored features: ``prompt`` (the normalised message list as JSON text), ``source`` ("path:line"),
and for pairs ``chosen``, ``rejected`` and, when the files have scores, ``chosen_score``,
``rejected_score`` (float64). ``info.metadata`` holds ``kind``, ``has_scores``, the per-split
read stats and each source file's path and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core import utils as tfds_utils

from llm.data.records import KINDS, read_rows

BUILDER_NAME = "local_preference_data"
VERSION = "1.0.0"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _features(kind: str, has_scores: bool) -> tfds.features.FeaturesDict:
    text = tfds.features.Text()
    spec = {"prompt": text, "source": text}
    if kind == "pairs":
        spec.update(chosen=text, rejected=text)
        if has_scores:
            spec.update(chosen_score=tfds.features.Scalar(np.float64),
                        rejected_score=tfds.features.Scalar(np.float64))
    return tfds.features.FeaturesDict(spec)


class LocalPreferenceData(tfds.core.GeneratorBasedBuilder):
    """Rows already read and validated by ``read_rows``, written as array_record shards."""

    VERSION = tfds.core.Version(VERSION)

    # No code-side checksums or metadata files: skip TFDS's lookup of this module's resource
    # path, which needs the `importlib_resources` backport for packages like this one.
    @tfds_utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def __init__(self, *, name: str, rows: Mapping[str, list[dict]], kind: str, has_scores: bool,
                 metadata: dict[str, Any], **kwargs):
        self._rows, self._kind, self._has_scores = rows, kind, has_scores
        self._metadata = metadata
        config = tfds.core.BuilderConfig(name=name, description=f"{kind} from local files")
        super().__init__(config=config, file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: dataset_info_from_configs would look for metadata files
        # next to this module.
        return tfds.core.DatasetInfo(
            builder=self, features=_features(self._kind, self._has_scores),
            metadata=tfds.core.MetadataDict(self._metadata), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(rows) for split, rows in self._rows.items()}

    def _generate_examples(self, rows):
        for i, row in enumerate(rows):
            yield i, {**row, "prompt": json.dumps(row["prompt"], ensure_ascii=False)}


def prepare_tfds(
    source_path: str | os.PathLike | Mapping[str, str | os.PathLike],
    data_dir: str | os.PathLike,
    *,
    name: str,
    kind: str = "pairs",
    skip_bad_rows: bool = False,
    overwrite: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Reads local files once and writes a TFDS array_record dataset.

    Args:
      source_path: one ``.jsonl``/``.parquet`` file (the ``"train"`` split) or ``{split: file}``.
      data_dir: TFDS data directory.
      name: dataset (builder config) name, e.g. ``"min_length"``.
      kind: ``"pairs"`` or ``"prompts"``.
      skip_bad_rows: skip and count bad rows instead of raising ``BadRowError``.
      overwrite: rebuild an existing dataset; without it an existing dataset is reused when its
        source files are unchanged (same SHA-256) and a ``FileExistsError`` is raised otherwise.

    Returns:
      (dataset directory for :func:`load_prepared` / ``make_loader``, metadata dict with
      ``kind``, ``has_scores``, per-split ``stats`` and ``sources``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(source_path, Mapping):
        source_path = {"train": source_path}
    sources = {s: {"path": os.path.abspath(os.fspath(p)), "sha256": _sha256(os.fspath(p))}
               for s, p in sorted(source_path.items())}
    out_dir = os.path.join(os.fspath(data_dir), BUILDER_NAME, name, VERSION)
    if os.path.exists(os.path.join(out_dir, "dataset_info.json")):
        old = dict(tfds.builder_from_directory(out_dir).info.metadata)
        same = old.get("sources") == sources and old.get("kind") == kind and (
            old.get("skip_bad_rows") == skip_bad_rows)
        if same and not overwrite:
            logging.info("reusing prepared dataset %s", out_dir)
            return out_dir, old
        if not overwrite:
            raise FileExistsError(f"{out_dir} was prepared from other sources or settings; "
                                  "pass overwrite=True to rebuild it")
    rows, stats = {}, {}
    for split, src in sources.items():
        rows[split], stats[split] = read_rows(src["path"], kind=kind, skip_bad_rows=skip_bad_rows)
    score_flags = {split: s["has_scores"] for split, s in stats.items() if s["rows_kept"]}
    if len(set(score_flags.values())) > 1:
        raise ValueError(f"splits disagree on scores (has_scores per split: {score_flags})")
    has_scores = kind == "pairs" and any(score_flags.values())
    metadata = {"kind": kind, "has_scores": has_scores, "skip_bad_rows": skip_bad_rows,
                "sources": sources, "stats": stats}
    builder = LocalPreferenceData(name=name, rows=rows, kind=kind, has_scores=has_scores,
                                  metadata=metadata, data_dir=os.fspath(data_dir))
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return os.fspath(builder.data_dir), metadata


class _DecodedRecords(Sequence):
    """Random-access view of an array_record data source yielding normalised row dicts."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        raw = self._source[int(index)]
        row = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in raw.items()}
        row["prompt"] = json.loads(row["prompt"])
        for k in ("chosen_score", "rejected_score"):
            if k in row:
                row[k] = float(row[k])
        return row


def load_prepared(dataset_dir: str | os.PathLike, split: str = "train"):
    """(random-access rows of ``split``, metadata dict) of a dataset written by prepare_tfds."""
    builder = tfds.builder_from_directory(os.fspath(dataset_dir))
    if split not in builder.info.splits:
        raise ValueError(f"{dataset_dir}: no split {split!r}; has {list(builder.info.splits)}")
    return _DecodedRecords(builder.as_data_source(split)), dict(builder.info.metadata)
