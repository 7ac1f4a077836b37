"""Test helper: a synthetic Hugging Face checkpoint of a given shape with random bf16 weights,
written one tensor at a time (the whole model is never in memory).

    write_synthetic_hf(path, MISTRAL_7B_WIDTH | dict(num_hidden_layers=2, ...), seed=0)
        -> (config.json dict, {tensor name: shape})
"""

import json

import ml_dtypes
import numpy as np

from llm import hf_layout
from llm.safetensors_io import write_safetensors_stream

# Mistral-7B-v0.1's config.json fields that fix the tensor shapes
MISTRAL_7B_WIDTH = dict(architectures=["MistralForCausalLM"], model_type="mistral",
                        vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                        head_dim=128, max_position_embeddings=32768, rms_norm_eps=1e-5,
                        rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False,
                        hidden_act="silu", torch_dtype="bfloat16")


def random_bf16(rng, shape) -> np.ndarray:
    """Finite bf16 values with |x| in [2^-7, 2) and random sign, drawn as bit patterns (sign
    and the low 3 exponent bits random, exponent field 120..127, any mantissa): cheap for
    hundreds of millions of values."""
    bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    bits &= 0x83FF
    bits |= 0x3C00
    return bits.view(ml_dtypes.bfloat16)


def write_synthetic_hf(path, hf_config: dict, *, seed: int = 0):
    """config.json + model.safetensors (bf16) under `path`; returns (hf_config, shapes)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config))
    config = hf_layout.config_from_hf(hf_config)
    shapes = {name: shape for name, shape, _ in hf_layout.hf_tensor_exports(config)}
    rng = np.random.default_rng(seed)
    write_safetensors_stream(path / "model.safetensors",
                             [(n, s, ml_dtypes.bfloat16) for n, s in shapes.items()],
                             lambda name: random_bf16(rng, shapes[name]))
    return hf_config, shapes
