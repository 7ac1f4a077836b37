"""Load and save real checkpoints: local Hugging Face folders (safetensors only) and GGUF.

API:
  load_hf(path, *, dtype="float32", param_dtype="float32", check_finite=True)
      -> (DecoderConfig, params, Tokenizer)
      `path`: a folder with config.json, model.safetensors or a sharded
      model.safetensors.index.json, and tokenizer.json (tokenizer is None when absent).
  save_hf(path, config, params, tokenizer=None, *, architecture=None) -> None
      writes config.json, model.safetensors (float32) and the tokenizer; `transformers` loads it.
  load_gguf(path, *, dtype="float32", check_finite=True) -> (DecoderConfig, params, Tokenizer)
  load_smollm2(*, dtype="float32") -> (config, params, tokenizer)   the embedded default model
  load_model(name_or_path, *, check_finite=True) -> (config, params, tokenizer)
      "smollm2", an HF folder or a .gguf
  check_tokenizer_fits(tokenizer, config, *, source)   tokenizer ids <= embedding rows

Errors (unknown architecture, malformed config.json fields, missing/unexpected tensors, wrong
shapes or dtypes, truncated or corrupt files, shard paths outside the folder, aliased tensor
bytes, NaN/inf weights with check_finite, a tokenizer larger than the embedding) raise
CheckpointError(file, tensor or field, reason). Pickle files are never read.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from llm import hf_layout
from llm.gguf_import import load_gguf, load_smollm2
from llm.safetensors_io import CheckpointError, read_checkpoint_dir, write_safetensors
from llm.tokenizer import Tokenizer, load_tokenizer
from modeseek.decoder import DecoderConfig

__all__ = ["CheckpointError", "check_tokenizer_fits", "load_gguf", "load_hf", "load_model",
           "load_smollm2", "save_hf"]


def _read_config(path: str) -> dict:
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(path, "config.json", "missing")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(config_path, "", f"not valid JSON ({type(e).__name__}: "
                              f"{str(e)[:100]})") from None
    if not isinstance(config, dict):
        raise CheckpointError(config_path, "", f"must be a JSON object, got "
                              f"{type(config).__name__}")
    return config


def check_tokenizer_fits(tokenizer, config: DecoderConfig, *, source: str) -> None:
    """CheckpointError unless every token id of `tokenizer` has an embedding row
    (tokenizer.vocab_size <= config.vocab_size; padded embeddings may have more rows)."""
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(source, "vocab_size", f"the tokenizer has {tokenizer.vocab_size} "
                              f"tokens but the model's embedding has {config.vocab_size} rows; "
                              "they do not belong together")


def load_hf(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
            check_finite: bool = True):
    """check_finite: refuse NaN/inf in floating-point weights (False skips that pass)."""
    if not os.path.isdir(path):
        raise CheckpointError(path, "", "not a directory")
    hf_config = _read_config(path)
    config_path = os.path.join(path, "config.json")
    config = hf_layout.config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype,
                                      source=config_path)
    arch = hf_layout._architecture(hf_config, source=config_path)
    tensors = read_checkpoint_dir(path, check_finite=check_finite)
    params = hf_layout.params_from_hf(tensors, config, arch, source=path)
    params = jax.tree.map(jnp.asarray, params)
    tokenizer = (load_tokenizer(path) if os.path.exists(os.path.join(path, "tokenizer.json"))
                 else None)
    check_tokenizer_fits(tokenizer, config, source=path)
    return config, params, tokenizer


def save_hf(path: str, config: DecoderConfig, params, tokenizer: Tokenizer | None = None, *,
            architecture: str | None = None) -> None:
    os.makedirs(path, exist_ok=True)
    arch = architecture or hf_layout.architecture_of(config)
    ids = {}
    if tokenizer is not None:
        ids = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        tokenizer.save(path)
    hf_config = hf_layout.config_to_hf(config, arch, **ids)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    tensors = hf_layout.params_to_hf(jax.device_get(params), config, arch)
    write_safetensors(os.path.join(path, "model.safetensors"),
                      {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()})


def load_model(name_or_path: str, *, dtype: str = "float32", check_finite: bool = True):
    if name_or_path == "smollm2":
        return load_smollm2(dtype=dtype, check_finite=check_finite)
    if name_or_path.endswith(".gguf"):
        return load_gguf(name_or_path, dtype=dtype, check_finite=check_finite)
    if os.path.isdir(name_or_path):
        return load_hf(name_or_path, dtype=dtype, check_finite=check_finite)
    raise CheckpointError(name_or_path, "", "not 'smollm2', a .gguf file or an HF folder")
