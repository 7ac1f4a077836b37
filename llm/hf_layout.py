"""Explicit name and layout mapping between Hugging Face checkpoints and `modeseek.decoder`.

API:
  config_from_hf(hf_config: dict, *, dtype="float32", param_dtype="float32") -> DecoderConfig
  config_to_hf(config, architecture=None, *, bos_id, eos_id, pad_id) -> dict  (config.json)
  architecture_of(config) -> "llama" | "mistral" | "qwen2" | "gpt_neox"
  params_to_hf(params, config, architecture) -> dict[str, np.ndarray]
  hf_tensor_exports(config, architecture) -> [(HF name, HF shape, get(params))]  streamed
  (HF tensors -> params, host or sharded, one tensor at a time: `llm.hf_load`)

Supported: LlamaForCausalLM (Llama 1/2, SmolLM, SmolLM2), MistralForCausalLM,
Qwen2ForCausalLM, GPTNeoXForCausalLM (Pythia). HF linear weights are [out, in]; ours are
[in, ...out] with heads split out. GPT-NeoX fuses q,k,v as rows ordered (head, {q,k,v}, dim).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from llm.safetensors_io import CheckpointError
from modeseek.decoder import DecoderConfig, param_shapes

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                 "Qwen2ForCausalLM": "qwen2", "GPTNeoXForCausalLM": "gpt_neox"}
_CLASS = {v: k for k, v in ARCHITECTURES.items()}
# non-parameter buffers some checkpoints carry
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")


_REQUIRED = object()


def _field(hf: dict[str, Any], key: str, kind: str, default: Any = _REQUIRED, *,
           source: str = "config.json") -> Any:
    """hf[key] checked against `kind` ("pos_int", "pos_float", "fraction" in (0, 1], "bool"),
    or `default` when absent/null; CheckpointError(source, key, reason) otherwise."""
    value = hf.get(key)
    if value is None:
        if default is _REQUIRED:
            raise CheckpointError(source, key, "required field is missing")
        return default
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {"pos_int": isinstance(value, int) and not isinstance(value, bool) and value > 0,
          "pos_float": number and math.isfinite(value) and value > 0,
          "fraction": number and 0 < value <= 1,
          "bool": isinstance(value, bool)}[kind]
    if not ok:
        expected = {"pos_int": "a positive integer", "pos_float": "a positive finite number",
                    "fraction": "a number in (0, 1]", "bool": "true or false"}[kind]
        raise CheckpointError(source, key, f"must be {expected}, got {value!r}")
    return value


def _architecture(hf: dict[str, Any], *, source: str = "config.json") -> str:
    if not isinstance(hf, dict):
        raise CheckpointError(source, "", f"must be a JSON object, got {type(hf).__name__}")
    names = hf.get("architectures") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(source, "architectures", f"must be a list of names, got {names!r}")
    known = [ARCHITECTURES[n] for n in names if n in ARCHITECTURES]
    if not known:
        raise CheckpointError(f"config.json architectures={names} (model_type="
                              f"{hf.get('model_type')!r}) is not supported; supported: "
                              f"{sorted(ARCHITECTURES)}")
    return known[0]


def _rope(hf: dict[str, Any], *, source: str = "config.json") -> tuple[float, float]:
    """(theta, partial rotary fraction): pre-5.0 keys or transformers 5 `rope_parameters`."""
    rp = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for key, value in (("rope_parameters", rp), ("rope_scaling", scaling)):
        if not isinstance(value, dict):
            raise CheckpointError(source, key, f"must be an object, got {value!r}")
    merged = {**hf, **rp}
    for key in ("rope_theta", "rotary_emb_base"):
        _field(merged, key, "pos_float", None, source=source)
    for key in ("partial_rotary_factor", "rotary_pct"):
        _field(merged, key, "fraction", None, source=source)
    kind = rp.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise CheckpointError(f"config.json: rope scaling type {kind!r} is not supported")
    theta = rp.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    fraction = rp.get("partial_rotary_factor",
                      hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    return float(theta), float(fraction)


def _check_fields(hf: dict[str, Any], source: str) -> None:
    """Types and ranges of every field config_from_hf reads (before any arithmetic on them)."""
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"):
        _field(hf, key, "pos_int", source=source)
    for key in ("head_dim", "num_key_value_heads", "max_position_embeddings", "sliding_window"):
        if hf.get(key) != 0:  # 0 is how some configs say "derive it" / "no window"
            _field(hf, key, "pos_int", None, source=source)
    for key in ("rms_norm_eps", "layer_norm_eps"):
        _field(hf, key, "pos_float", None, source=source)
    for key in ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_parallel_residual",
                "use_sliding_window"):
        _field(hf, key, "bool", None, source=source)
    heads, kv = hf["num_attention_heads"], hf.get("num_key_value_heads") or hf[
        "num_attention_heads"]
    if not hf.get("head_dim") and hf["hidden_size"] % heads:
        raise CheckpointError(source, "hidden_size", f"{hf['hidden_size']} is not a multiple of "
                              f"num_attention_heads={heads} (and no head_dim is given)")
    if heads % kv:
        raise CheckpointError(source, "num_key_value_heads", f"{kv} does not divide "
                              f"num_attention_heads={heads}")


def config_from_hf(hf: dict[str, Any], *, dtype: str = "float32",
                   param_dtype: str = "float32", source: str = "config.json") -> DecoderConfig:
    """DecoderConfig of an HF config.json dict; malformed fields (wrong type, missing, out of
    range) raise CheckpointError(source, field, reason)."""
    arch = _architecture(hf, source=source)
    _check_fields(hf, source)
    theta, fraction = _rope(hf, source=source)
    heads = hf["num_attention_heads"]
    embed = hf["hidden_size"]
    common = dict(vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
                  num_heads=heads, head_dim=hf.get("head_dim") or embed // heads,
                  embed_dim=embed, mlp_dim=hf["intermediate_size"], rope_theta=theta,
                  rotary_fraction=fraction, max_len=hf.get("max_position_embeddings", 2048),
                  dtype=dtype, param_dtype=param_dtype)
    if arch == "gpt_neox":
        act = hf.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise CheckpointError(f"config.json: GPT-NeoX hidden_act={act!r} is not supported")
        bias = hf.get("attention_bias", True)
        return DecoderConfig(**common, num_kv_heads=heads, norm="layer",
                             norm_eps=hf.get("layer_norm_eps", 1e-5),
                             mlp="gelu" if act == "gelu" else "gelu_tanh",
                             parallel_residual=hf.get("use_parallel_residual", True),
                             tied_embeddings=hf.get("tie_word_embeddings", False),
                             qkv_bias=bias, attn_out_bias=bias, mlp_bias=True)
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act={hf.get('hidden_act')!r} unsupported")
    window = hf.get("sliding_window") if arch == "mistral" else None
    if arch == "qwen2" and hf.get("use_sliding_window"):
        layer_types = set(hf.get("layer_types") or [])
        if layer_types != {"sliding_attention"}:
            raise CheckpointError("config.json: Qwen2 with sliding window on only some layers "
                                  "is not supported")
        window = hf["sliding_window"]
    attention_bias = hf.get("attention_bias", False)
    return DecoderConfig(**common, num_kv_heads=hf.get("num_key_value_heads") or heads,
                         norm="rms", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu",
                         parallel_residual=False,
                         tied_embeddings=hf.get("tie_word_embeddings", False),
                         sliding_window=window, qkv_bias=attention_bias or arch == "qwen2",
                         attn_out_bias=attention_bias, mlp_bias=hf.get("mlp_bias", False))


def architecture_of(config: DecoderConfig) -> str:
    if config.parallel_residual or config.norm == "layer":
        return "gpt_neox"
    if config.qkv_bias and not config.attn_out_bias:
        return "qwen2"
    return "mistral" if config.sliding_window else "llama"


def config_to_hf(config: DecoderConfig, architecture: str | None = None, *, bos_id=None,
                 eos_id=None, pad_id=None) -> dict[str, Any]:
    arch = architecture or architecture_of(config)
    hf: dict[str, Any] = dict(
        architectures=[_CLASS[arch]], model_type=arch, vocab_size=config.vocab_size,
        hidden_size=config.embed_dim, intermediate_size=config.mlp_dim,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        max_position_embeddings=config.max_len, tie_word_embeddings=config.tied_embeddings,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, torch_dtype="float32",
        rope_theta=config.rope_theta)
    if arch == "gpt_neox":
        if config.num_kv_heads != config.num_heads or config.mlp == "swiglu":
            raise CheckpointError("GPT-NeoX export needs num_kv_heads == num_heads and GELU")
        hf.update(rotary_pct=config.rotary_fraction, rotary_emb_base=config.rope_theta,
                  partial_rotary_factor=config.rotary_fraction,
                  use_parallel_residual=config.parallel_residual,
                  layer_norm_eps=config.norm_eps, attention_bias=config.qkv_bias,
                  hidden_act="gelu" if config.mlp == "gelu" else "gelu_pytorch_tanh")
        return hf
    if config.rotary_fraction != 1.0 or config.mlp != "swiglu" or config.norm != "rms":
        raise CheckpointError(f"{arch} export needs full rotary, SwiGLU and RMSNorm")
    hf.update(num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
              rms_norm_eps=config.norm_eps, hidden_act="silu")
    if arch == "qwen2":
        hf.update(use_sliding_window=bool(config.sliding_window),
                  sliding_window=config.sliding_window)
    elif arch == "mistral":
        hf.update(sliding_window=config.sliding_window)
    else:
        hf.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    return hf


def _names(arch: str, i: int) -> dict[str, str]:
    """Our parameter path ("/"-joined) -> HF tensor name, for layer i."""
    if arch == "gpt_neox":
        p = f"gpt_neox.layers.{i}."
        return {"attn_norm/scale": p + "input_layernorm.weight",
                "attn_norm/bias": p + "input_layernorm.bias",
                "mlp_norm/scale": p + "post_attention_layernorm.weight",
                "mlp_norm/bias": p + "post_attention_layernorm.bias",
                # per-part names of the fused tensor after `_unfuse_neox`
                **{f"attn/{x}_kernel": p + f"attention.query_key_value.{x}.weight" for x in "qkv"},
                **{f"attn/{x}_bias": p + f"attention.query_key_value.{x}.bias" for x in "qkv"},
                "attn/o_kernel": p + "attention.dense.weight",
                "attn/o_bias": p + "attention.dense.bias",
                "mlp/up_kernel": p + "mlp.dense_h_to_4h.weight",
                "mlp/up_bias": p + "mlp.dense_h_to_4h.bias",
                "mlp/down_kernel": p + "mlp.dense_4h_to_h.weight",
                "mlp/down_bias": p + "mlp.dense_4h_to_h.bias"}
    p = f"model.layers.{i}."
    names = {"attn_norm/scale": p + "input_layernorm.weight",
             "mlp_norm/scale": p + "post_attention_layernorm.weight",
             "attn/o_kernel": p + "self_attn.o_proj.weight",
             "attn/o_bias": p + "self_attn.o_proj.bias"}
    for x in "qkv":
        names[f"attn/{x}_kernel"] = p + f"self_attn.{x}_proj.weight"
        names[f"attn/{x}_bias"] = p + f"self_attn.{x}_proj.bias"
    for x in ("gate", "up", "down"):
        names[f"mlp/{x}_kernel"] = p + f"mlp.{x}_proj.weight"
        names[f"mlp/{x}_bias"] = p + f"mlp.{x}_proj.bias"
    return names


def _top_names(arch: str) -> dict[str, str]:
    if arch == "gpt_neox":
        return {"embedding": "gpt_neox.embed_in.weight", "lm_head": "embed_out.weight",
                "final_norm/scale": "gpt_neox.final_layer_norm.weight",
                "final_norm/bias": "gpt_neox.final_layer_norm.bias"}
    return {"embedding": "model.embed_tokens.weight", "lm_head": "lm_head.weight",
            "final_norm/scale": "model.norm.weight"}


def _to_ours(path: str, w: np.ndarray, config: DecoderConfig) -> np.ndarray:
    """HF layout -> our layout for one tensor (shape already checked against HF's)."""
    H, G, K, D = config.num_heads, config.num_kv_heads, config.head_dim, config.embed_dim
    leaf = path.split("/")[-1]
    heads = {"q": H, "k": G, "v": G}
    if leaf in ("q_kernel", "k_kernel", "v_kernel"):
        return w.T.reshape(D, heads[leaf[0]], K)
    if leaf in ("q_bias", "k_bias", "v_bias"):
        return w.reshape(heads[leaf[0]], K)
    if leaf == "o_kernel":
        return w.T.reshape(H, K, D)
    if leaf.endswith("_kernel") or leaf == "lm_head":
        return w.T
    return w


def _to_hf(path: str, w: np.ndarray) -> np.ndarray:
    leaf = path.split("/")[-1]
    if leaf in ("q_kernel", "k_kernel", "v_kernel"):
        return w.reshape(w.shape[0], -1).T
    if leaf in ("q_bias", "k_bias", "v_bias"):
        return w.reshape(-1)
    if leaf == "o_kernel":
        return w.reshape(-1, w.shape[-1]).T
    if leaf.endswith("_kernel") or leaf == "lm_head":
        return w.T
    return w


@functools.lru_cache(maxsize=16)
def _flat_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Parameter path -> shape (cached: tracing the initialiser takes ~0.1 s; do not mutate)."""
    out = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, prefix + k + "/")
            else:
                out[prefix + k] = v[0]

    walk(param_shapes(config), "")
    return out


def _hf_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return _to_hf(path, np.empty(shape, np.uint8)).shape


def hf_tensor_exports(config: DecoderConfig, arch: str | None = None
                      ) -> list[tuple[str, tuple[int, ...], Any]]:
    """[(HF name, HF shape, get)] in file order, where `get(params)` gathers that one tensor
    (float32, HF layout): a stacked leaf is indexed per layer, so only one layer of one
    parameter reaches the host at a time (params may be sharded device arrays)."""
    arch = arch or architecture_of(config)

    def leaf(params, path):
        for p in path.split("/"):
            params = params[p]
        return params

    def getter(path, i=None):
        def get(params):
            node = leaf(params, path)
            return _to_hf(path, np.asarray(node if i is None else node[i], dtype=np.float32))
        return get

    out = []
    for path, shape in _flat_shapes(config).items():
        if not path.startswith("layers/"):
            out.append((_top_names(arch)[path], _hf_shape(path, shape), getter(path)))
            continue
        rest = path.split("/", 1)[1]  # stacked [num_layers, ...]: HF layer i from row i
        out += [(_names(arch, i)[rest], _hf_shape(path, shape[1:]), getter(path, i))
                for i in range(config.num_layers)]
    if arch != "gpt_neox":
        return out
    # GPT-NeoX: fuse q,k,v back into rows ordered (head, {q,k,v}, dim)
    H, K = config.num_heads, config.head_dim
    by_name = {name: (shape, get) for name, shape, get in out}
    fused = []
    for name, shape, get in out:
        if ".query_key_value." not in name:
            fused.append((name, shape, get))
            continue
        prefix, part, kind = name.rsplit(".", 2)
        if part == "q":
            gets = [by_name[f"{prefix}.{x}.{kind}"][1] for x in "qkv"]

            def get_fused(params, gets=gets, rest=shape[1:]):
                parts = [g(params).reshape(H, K, *rest) for g in gets]
                return np.stack(parts, axis=1).reshape(3 * H * K, *rest)
            fused.append((f"{prefix}.{kind}", (3 * H * K, *shape[1:]), get_fused))
    return fused


def params_to_hf(params: dict[str, Any], config: DecoderConfig,
                 arch: str | None = None) -> dict[str, np.ndarray]:
    """Every HF tensor at once (float32); `hf_tensor_exports` streams them instead."""
    return {name: get(params) for name, _, get in hf_tensor_exports(config, arch)}


# ----------------------------------------------------------------------------- reward models
# `*ForSequenceClassification`: the causal model's trunk under the same tensor names (no
# lm_head) plus `score.weight` [num_labels, hidden] without bias, read at one pooled position.
SEQUENCE_CLASSIFICATION = {"LlamaForSequenceClassification": "llama",
                           "MistralForSequenceClassification": "mistral",
                           "Qwen2ForSequenceClassification": "qwen2",
                           "GPTNeoXForSequenceClassification": "gpt_neox"}


def sequence_classification_architecture(hf: dict[str, Any]) -> str:
    """"llama" | "mistral" | "qwen2" | "gpt_neox" for a `*ForSequenceClassification` config."""
    for name in hf.get("architectures") or []:
        if name in SEQUENCE_CLASSIFICATION:
            return SEQUENCE_CLASSIFICATION[name]
    raise CheckpointError(f"config.json architectures={hf.get('architectures')} is not a "
                          "supported sequence-classification reward model; supported: "
                          f"{sorted(SEQUENCE_CLASSIFICATION)}")


def reward_model_from_hf(hf: dict[str, Any], tensors: dict[str, np.ndarray], *,
                         source: str = "checkpoint", dtype: str = "float32",
                         param_dtype: str = "float32"):
    """(DecoderConfig, {"decoder", "head"} scalar-model params) of a HF reward model.

    The head is `score.weight[0]` as kernel [D] with bias 0 (transformers' score layer has no
    bias); exactly one label is required. The returned config has tied_embeddings=True: the
    classifier has no lm_head, and only the hidden states (never the logits) are used, so the
    embedding table stands in for it (under jit the unused logits are not computed)."""
    arch = sequence_classification_architecture(hf)
    causal = dict(hf, architectures=[_CLASS[arch]])
    config = config_from_hf(causal, dtype=dtype, param_dtype=param_dtype)
    config = config.replace(tied_embeddings=True)
    tensors = dict(tensors)
    if "score.bias" in tensors:
        raise CheckpointError(f"{source}: unexpected tensor score.bias (transformers' "
                              "sequence-classification head has no bias)")
    weight = tensors.pop("score.weight", None)
    if weight is None:
        raise CheckpointError(f"{source}: missing tensor score.weight (the reward head)")
    if tuple(weight.shape) != (1, config.embed_dim):
        raise CheckpointError(f"{source}: tensor score.weight has shape {tuple(weight.shape)}, "
                              f"expected (1, {config.embed_dim}): a reward model has one label")
    from llm.hf_load import params_from_hf  # hf_load builds on this module

    decoder = params_from_hf(tensors, config, arch, source=source)
    head = {"kernel": np.asarray(weight[0], np.float32), "bias": np.zeros((), np.float32)}
    return config, {"decoder": decoder, "head": head}
