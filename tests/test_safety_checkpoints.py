"""Checkpoint import refuses what it cannot load correctly, with CheckpointError(file, tensor or
field, reason): shard paths outside the model folder, aliased tensor bytes, malformed shapes and
offsets, malformed config.json fields, NaN/inf weights, and a tokenizer larger than the
embedding; the same for GGUF where it applies."""

import json
import os
import struct

import jax
import ml_dtypes
import numpy as np
import pytest
import tokenizers
from test_checkpoints import make_tiny_dir

from llm import checkpoints
from llm.safetensors_io import CheckpointError, read_safetensors, write_safetensors
from llm.tokenizer import Tokenizer


@pytest.fixture
def tiny_dir(tmp_path):
    return make_tiny_dir(tmp_path)


def _raw_safetensors(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _shard(path):
    """Split the tiny folder's weights into two shards; returns (tensors, shard names)."""
    tensors = {k: np.array(v) for k, v in read_safetensors(str(path / "model.safetensors")).items()}
    os.remove(path / "model.safetensors")
    names = sorted(tensors)
    return tensors, {"model-00001-of-00002.safetensors": names[::2],
                     "model-00002-of-00002.safetensors": names[1::2]}


@pytest.mark.parametrize("bad", ["/abs/x.safetensors", "../outside.safetensors",
                                 "sub/../../outside.safetensors", "C:\\x.safetensors"])
def test_shard_index_path_outside_the_model_folder_is_refused(tiny_dir, tmp_path, bad):
    _, params, path = tiny_dir
    tensors, shards = _shard(path)
    (first, first_names), (second, second_names) = shards.items()
    write_safetensors(str(path / first), {n: tensors[n] for n in first_names})
    # a valid shard really exists outside the folder: only the path check stops reading it
    write_safetensors(str(tmp_path / "outside.safetensors"),
                      {n: tensors[n] for n in second_names})
    weight_map = {**dict.fromkeys(first_names, first), **dict.fromkeys(second_names, bad)}
    index = path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="outside the model folder") as e:
        checkpoints.load_hf(str(path))
    assert (e.value.file, e.value.what) == (str(index), "weight_map")
    assert repr(bad) in e.value.reason
    # the same shard inside the folder loads
    os.rename(tmp_path / "outside.safetensors", path / second)
    index.write_text(json.dumps({"weight_map": {**weight_map, **dict.fromkeys(second_names,
                                                                               second)}}))
    jax.tree.map(np.testing.assert_array_equal, checkpoints.load_hf(str(path))[1], params)


def test_aliased_tensor_bytes_are_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    data = np.arange(8, dtype=np.float32).tobytes()
    _raw_safetensors(path, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                            "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, data)
    with pytest.raises(CheckpointError, match="overlaps tensor 'a'.*aliased") as e:
        read_safetensors(str(path))
    assert (e.value.file, e.value.what) == (str(path), "tensor 'b'")
    # partial overlap, and the disjoint layout that is fine
    _raw_safetensors(path, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                            "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, data)
    with pytest.raises(CheckpointError, match="overlaps"):
        read_safetensors(str(path))
    _raw_safetensors(path, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                            "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]},
                            "empty": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}},
                     data)
    out = read_safetensors(str(path))
    np.testing.assert_array_equal(out["b"], [4, 5, 6, 7])


@pytest.mark.parametrize("entry, reason", [
    ({"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}, "non-negative integers"),
    ({"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}, "non-negative integers"),
    ({"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}, "non-negative integers"),
    ({"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}, "non-negative integers"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16.5]}, "pair of integers"),
    ({"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}, "pair of integers"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 32]}, "pair of integers"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}, "0 <= begin <= end"),
    ({"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}, "0 <= begin <= end"),
    ({"dtype": "F32", "shape": [400], "data_offsets": [0, 1600]}, "ends at byte"),
    ({"dtype": "F32", "shape": [4]}, "lacks"),
    ({"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}, "unsupported dtype"),
    ([0, 16], "not an object"),
])
def test_malformed_shapes_and_offsets_name_file_and_tensor(tmp_path, entry, reason):
    path = tmp_path / "model.safetensors"
    _raw_safetensors(path, {"w": entry}, np.zeros(4, np.float32).tobytes())
    with pytest.raises(CheckpointError, match=reason) as e:
        read_safetensors(str(path))
    assert (e.value.file, e.value.what) == (str(path), "tensor 'w'")


def test_deeply_nested_header_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "model.safetensors"
    raw = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="header: not valid JSON"):
        read_safetensors(str(path))


@pytest.mark.parametrize("change, field, reason", [
    ({"hidden_size": "48"}, "hidden_size", "positive integer, got '48'"),
    ({"num_attention_heads": 0}, "num_attention_heads", "positive integer, got 0"),
    ({"num_attention_heads": 5, "head_dim": None}, "hidden_size",
     "not a multiple of num_attention_heads=5"),
    ({"num_key_value_heads": 3}, "num_key_value_heads", "does not divide"),
    ({"vocab_size": None}, "vocab_size", "required field is missing"),
    ({"num_hidden_layers": True}, "num_hidden_layers", "positive integer"),
    ({"intermediate_size": 1.5}, "intermediate_size", "positive integer"),
    ({"rope_theta": -1.0}, "rope_theta", "positive finite number"),
    ({"rope_theta": "1e4"}, "rope_theta", "positive finite number"),
    ({"partial_rotary_factor": 1.5}, "partial_rotary_factor", r"in \(0, 1\]"),
    ({"rms_norm_eps": 0}, "rms_norm_eps", "positive finite"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings", "true or false"),
    ({"max_position_embeddings": -5}, "max_position_embeddings", "positive integer"),
    ({"rope_scaling": "linear"}, "rope_scaling", "must be an object"),
    ({"architectures": "LlamaForCausalLM"}, "architectures", "list of names"),
])
def test_malformed_config_fields_name_file_and_field(tiny_dir, change, field, reason):
    _, _, path = tiny_dir
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=reason) as e:
        checkpoints.load_hf(str(path))
    assert (e.value.file, e.value.what) == (str(config_path), field)


@pytest.mark.parametrize("text, reason", [("[" * 100_000 + "]" * 100_000, "RecursionError"),
                                          ("[1, 2]", "must be a JSON object, got list")])
def test_deep_or_non_object_config_json(tiny_dir, text, reason):
    _, _, path = tiny_dir
    (path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=reason) as e:
        checkpoints.load_hf(str(path))
    assert e.value.file == str(path / "config.json")


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_nan_weights_refused_unless_finite_check_is_off(tiny_dir, dtype):
    config, params, path = tiny_dir
    weights = path / "model.safetensors"
    tensors = {k: np.array(v).astype(dtype) for k, v in read_safetensors(str(weights)).items()}
    tensors["model.norm.weight"][:] = np.nan
    tensors["model.embed_tokens.weight"][3, 1] = np.inf
    write_safetensors(str(weights), tensors)
    with pytest.raises(CheckpointError, match="values are NaN or inf.*check_finite=False") as e:
        checkpoints.load_hf(str(path))
    assert e.value.file == str(weights)
    assert e.value.what in ("tensor 'model.norm.weight'", "tensor 'model.embed_tokens.weight'")
    _, loaded, _ = checkpoints.load_hf(str(path), check_finite=False)
    assert np.isnan(np.asarray(loaded["final_norm"]["scale"])).all()
    # integer tensors are not float: never checked
    path2 = path / "ints.safetensors"
    write_safetensors(str(path2), {"i": np.array([1, 2], np.int32)})
    assert read_safetensors(str(path2))["i"].tolist() == [1, 2]


def _word_tokenizer(n):
    vocab = {f"t{i}": i for i in range(n - 1)} | {"<eos>": n - 1}
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return Tokenizer(hf, bos_token=None, eos_token="<eos>")


def test_tokenizer_larger_than_embedding_is_refused(tiny_dir):
    config, params, path = tiny_dir
    checkpoints.save_hf(str(path), config, params, _word_tokenizer(config.vocab_size))
    assert checkpoints.load_hf(str(path))[2].vocab_size == config.vocab_size
    checkpoints.save_hf(str(path), config, params, _word_tokenizer(config.vocab_size + 1))
    with pytest.raises(CheckpointError, match=f"{config.vocab_size + 1} tokens.*"
                                              f"{config.vocab_size} rows") as e:
        checkpoints.load_hf(str(path))
    assert (e.value.file, e.value.what) == (str(path), "vocab_size")


# ------------------------------------------------------------------ GGUF
def _write_gguf(path, tensors, *, heads=4, embed=48):
    import gguf

    w = gguf.GGUFWriter(str(path), arch="llama")
    if heads is not None:
        w.add_uint32("llama.attention.head_count", heads)
    w.add_uint32("llama.embedding_length", embed)
    w.add_uint32("llama.vocab_size", 256)
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _set_gguf_offset(path, name: str, offset: int) -> None:
    """Overwrite tensor `name`'s data offset in the tensor-info section (1-D tensor layout:
    u64 name length, name, u32 n_dims, u64 dim, u32 type, u64 offset)."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    at = data.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded) + 4 + 8 + 4
    data[at:at + 8] = struct.pack("<Q", offset)
    path.write_bytes(bytes(data))


def test_gguf_aliased_nan_and_malformed_metadata(tmp_path):
    path = tmp_path / "m.gguf"
    ones = np.ones(32, np.float32)
    _write_gguf(path, {"output_norm.weight": ones, "token_embd.weight": ones * 2})
    _set_gguf_offset(path, "token_embd.weight", 0)  # now shares output_norm's bytes
    with pytest.raises(CheckpointError, match="overlaps tensor.*aliased") as e:
        checkpoints.load_gguf(str(path))
    assert e.value.file == str(path)
    nan = ones.copy()
    nan[5] = np.nan
    _write_gguf(path, {"output_norm.weight": nan})
    with pytest.raises(CheckpointError, match="1 of 32 values are NaN") as e:
        checkpoints.load_gguf(str(path))
    assert e.value.what == "tensor 'output_norm.weight'"
    for heads in (None, 0):  # was: TypeError / ZeroDivisionError naming nothing
        _write_gguf(path, {"output_norm.weight": ones}, heads=heads)
        with pytest.raises(CheckpointError, match="positive integer") as e:
            checkpoints.load_gguf(str(path))
        assert (e.value.file, e.value.what) == (str(path), "llama.attention.head_count")
