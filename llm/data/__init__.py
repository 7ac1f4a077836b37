"""Preference and prompt data: local JSONL/Parquet → TFDS array_record → grain batches.

``read_preference_file`` / ``read_prompt_file`` validate rows; ``prepare_tfds`` writes them once
as a TFDS dataset; ``make_loader`` yields fixed-shape tokenised numpy batches with
checkpointable state; ``default_dataset_path`` is the embedded Min Length data (PAPER.md §5).
"""

import os

from llm.data.encoding import (
    Encoder,
    encode_prompt,
    encode_response,
    pad_left,
    pad_right,
    with_system_prompt,
)
from llm.data.loader import make_loader
from llm.data.records import (
    BadRowError,
    DataFileError,
    read_preference_file,
    read_prompt_file,
    read_rows,
    take_rows,
)
from llm.data.tfds_builder import load_prepared, prepare_tfds

_MIN_LENGTH_FILES = {"train": "min_length_train.jsonl", "test": "min_length_test.jsonl"}


def default_dataset_path(split: str = "train") -> str:
    """Path of the embedded Min Length JSONL file (see ``llm.data.min_length``) for ``split``."""
    if split not in _MIN_LENGTH_FILES:
        raise ValueError(f"split must be one of {sorted(_MIN_LENGTH_FILES)}, got {split!r}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _MIN_LENGTH_FILES[split])


__all__ = [
    "BadRowError",
    "DataFileError",
    "Encoder",
    "default_dataset_path",
    "encode_prompt",
    "encode_response",
    "load_prepared",
    "make_loader",
    "pad_left",
    "pad_right",
    "prepare_tfds",
    "read_preference_file",
    "read_prompt_file",
    "read_rows",
    "take_rows",
    "with_system_prompt",
]
