"""Load and save real checkpoints: local Hugging Face folders (safetensors only) and GGUF.

API:
  load_hf(path, *, dtype="float32", param_dtype="float32") -> (DecoderConfig, params, Tokenizer)
      `path`: a folder with config.json, model.safetensors or a sharded
      model.safetensors.index.json, and tokenizer.json (tokenizer is None when absent).
  save_hf(path, config, params, tokenizer=None, *, architecture=None) -> None
      writes config.json, model.safetensors (float32) and the tokenizer; `transformers` loads it.
  load_gguf(path, *, dtype="float32") -> (DecoderConfig, params, Tokenizer)   (llm.gguf_import)
  load_smollm2(*, dtype="float32") -> (config, params, tokenizer)   the embedded default model
  load_model(name_or_path) -> (config, params, tokenizer)   "smollm2", an HF folder or a .gguf

Errors (unknown architecture, missing/unexpected tensors, wrong shapes or dtypes, truncated or
corrupt files) raise CheckpointError naming the file and tensor. Pickle files are never read.
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

__all__ = ["CheckpointError", "load_gguf", "load_hf", "load_model", "load_smollm2", "save_hf"]


def _read_config(path: str) -> dict:
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{path}: no config.json")
    try:
        with open(config_path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None


def load_hf(path: str, *, dtype: str = "float32", param_dtype: str = "float32"):
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    hf_config = _read_config(path)
    config = hf_layout.config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype)
    arch = hf_layout._architecture(hf_config)
    tensors = read_checkpoint_dir(path)
    params = hf_layout.params_from_hf(tensors, config, arch, source=path)
    params = jax.tree.map(jnp.asarray, params)
    tokenizer = (load_tokenizer(path) if os.path.exists(os.path.join(path, "tokenizer.json"))
                 else None)
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


def load_model(name_or_path: str, *, dtype: str = "float32"):
    if name_or_path == "smollm2":
        return load_smollm2(dtype=dtype)
    if name_or_path.endswith(".gguf"):
        return load_gguf(name_or_path, dtype=dtype)
    if os.path.isdir(name_or_path):
        return load_hf(name_or_path, dtype=dtype)
    raise CheckpointError(f"{name_or_path!r}: not 'smollm2', a .gguf file or an HF folder")
