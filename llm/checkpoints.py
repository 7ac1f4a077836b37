"""Load and save real checkpoints: Hugging Face folders (safetensors only) and GGUF.

API:
  open_model(name_or_path, *, dtype="float32", param_dtype="float32", check_finite=True)
      -> hf_load.ModelFiles    config, tensor names and shapes, tokenizer; no tensor read
  load_sharded(model_files, config, shardings) -> device params, read tensor by tensor into
      their shardings (`llm.hf_load.params_sharded`: no host copy of the model); `config` is
      model_files.config or a trunk of it (fewer layers; its param_dtype is used)
  load_hf(path, *, dtype="float32", param_dtype="float32", check_finite=True)
      -> (DecoderConfig, params, Tokenizer)
      `path`: a folder with config.json, model.safetensors or a sharded
      model.safetensors.index.json, and tokenizer.json (tokenizer is None when absent).
  save_hf(path, config, params, tokenizer=None, *, architecture=None) -> None
      writes config.json, model.safetensors (float32, one tensor gathered at a time: params
      may be sharded) and the tokenizer; `transformers` loads it.
  load_gguf(path, *, dtype="float32", check_finite=True) -> (DecoderConfig, params, Tokenizer)
  load_smollm2(*, dtype="float32") -> (config, params, tokenizer)   the embedded default model
  load_model(name_or_path, *, check_finite=True) -> (config, params, tokenizer)
      "smollm2", an HF folder or a .gguf
  check_tokenizer_fits(tokenizer, config, *, source)   tokenizer ids <= embedding rows

Folders and files go through `etils.epath` (local or `gs://...`); the tokenizer of an HF folder
is read from a local folder only (llm.tokenizer).

Errors (unknown architecture, malformed config.json fields, missing/unexpected tensors, wrong
shapes or dtypes, truncated or corrupt files, shard paths outside the folder, aliased tensor
bytes, NaN/inf weights with check_finite, a tokenizer larger than the embedding) raise
CheckpointError(file, tensor or field, reason). Pickle files are never read.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
from etils import epath

from llm import hf_layout
from llm.gguf_import import load_gguf, load_smollm2, open_gguf, smollm2_path
from llm.hf_load import ModelFiles, TensorSource, params_from_hf, params_sharded
from llm.safetensors_io import (
    CheckpointError,
    checkpoint_index,
    read_tensor,
    write_safetensors_stream,
)
from llm.tokenizer import Tokenizer, load_tokenizer
from modeseek.decoder import DecoderConfig

__all__ = ["CheckpointError", "check_tokenizer_fits", "load_gguf", "load_hf", "load_model",
           "load_sharded", "load_smollm2", "open_model", "save_hf"]


def _read_config(path) -> dict:
    config_path = epath.Path(path) / "config.json"
    if not config_path.exists():
        raise CheckpointError(path, "config.json", "missing")
    try:
        config = json.loads(config_path.read_text())
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


def open_hf(path, *, dtype: str = "float32", param_dtype: str = "float32",
            check_finite: bool = True) -> ModelFiles:
    """config.json, the safetensors headers and the tokenizer of an HF folder; tensors are
    read later, one at a time, by the returned ModelFiles.tensors.read."""
    path = str(path)
    if not epath.Path(path).is_dir():
        raise CheckpointError(path, "", "not a directory")
    hf_config = _read_config(path)
    config_path = str(epath.Path(path) / "config.json")
    config = hf_layout.config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype,
                                      source=config_path)
    arch = hf_layout._architecture(hf_config, source=config_path)
    refs = checkpoint_index(path)
    tensors = TensorSource({n: r.shape for n, r in refs.items()},
                           {n: r.dtype for n, r in refs.items()},
                           lambda name: read_tensor(refs[name], check_finite=check_finite))
    tokenizer = (load_tokenizer(path) if (epath.Path(path) / "tokenizer.json").exists()
                 else None)
    check_tokenizer_fits(tokenizer, config, source=path)
    return ModelFiles(config, arch, tensors, tokenizer, path)


def open_model(name_or_path: str, *, dtype: str = "float32", param_dtype: str = "float32",
               check_finite: bool = True) -> ModelFiles:
    kw = dict(dtype=dtype, param_dtype=param_dtype, check_finite=check_finite)
    if name_or_path == "smollm2":
        return open_gguf(smollm2_path(), **kw)
    if name_or_path.endswith(".gguf"):
        return open_gguf(name_or_path, **kw)
    if epath.Path(name_or_path).is_dir():
        return open_hf(name_or_path, **kw)
    raise CheckpointError(name_or_path, "", "not 'smollm2', a .gguf file or an HF folder")


def load_sharded(model: ModelFiles, config: DecoderConfig, shardings):
    """`config`'s parameters (model.config, or a trunk of its first layers) placed tensor by
    tensor into `shardings`, cast to config.param_dtype."""
    if config.replace(num_layers=model.config.num_layers, param_dtype=model.config.param_dtype,
                      dtype=model.config.dtype) != model.config:
        raise CheckpointError(model.source, "config", "the requested model differs from the "
                              "checkpoint's in more than num_layers and dtypes")
    if config.num_layers > model.config.num_layers:
        raise CheckpointError(model.source, "num_hidden_layers", f"{config.num_layers} layers "
                              f"requested, the checkpoint has {model.config.num_layers}")
    full = model.config.replace(param_dtype=config.param_dtype)
    return params_sharded(model.tensors, full, model.arch, shardings, where=model.source,
                          num_layers=config.num_layers)


def _loaded(model: ModelFiles):
    params = params_from_hf(model.tensors, model.config, model.arch, source=model.source)
    return model.config, jax.tree.map(jnp.asarray, params), model.tokenizer


def load_hf(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
            check_finite: bool = True):
    """check_finite: refuse NaN/inf in floating-point weights (False skips that pass)."""
    return _loaded(open_hf(path, dtype=dtype, param_dtype=param_dtype,
                           check_finite=check_finite))


def save_hf(path: str, config: DecoderConfig, params, tokenizer: Tokenizer | None = None, *,
            architecture: str | None = None) -> None:
    folder = epath.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    arch = architecture or hf_layout.architecture_of(config)
    ids = {}
    if tokenizer is not None:
        ids = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        tokenizer.save(path)
    hf_config = hf_layout.config_to_hf(config, arch, **ids)
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
    exports = hf_layout.hf_tensor_exports(config, arch)
    getters = {name: functools.partial(get, params) for name, _, get in exports}
    write_safetensors_stream(folder / "model.safetensors",
                             [(name, shape, "float32") for name, shape, _ in exports],
                             lambda name: getters[name]())


def load_model(name_or_path: str, *, dtype: str = "float32", check_finite: bool = True):
    return _loaded(open_model(name_or_path, dtype=dtype, check_finite=check_finite))
