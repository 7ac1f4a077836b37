"""Preference and prompt data: local JSONL/Parquet → TFDS array_record → grain batches.

``read_preference_file`` / ``read_prompt_file`` validate rows; ``prepare_tfds`` writes them once
as a TFDS dataset; ``make_loader`` yields fixed-shape tokenised numpy batches with
checkpointable state; ``default_dataset_path`` is the embedded Min Length data (PAPER.md §5).
"""

from llm.data.encoding import Encoder, encode_prompt, encode_response, pad_left, pad_right
from llm.data.loader import make_loader
from llm.data.min_length import default_dataset_path
from llm.data.records import (
    BadRowError,
    read_preference_file,
    read_prompt_file,
    read_rows,
)
from llm.data.tfds_builder import load_prepared, prepare_tfds

__all__ = [
    "BadRowError",
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
]
