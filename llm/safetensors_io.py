"""Minimal, strict safetensors reader/writer (numpy, memory-mapped; never executes code).

API:
  read_safetensors(path) -> dict[str, np.ndarray]       read-only memmapped views
  read_checkpoint_dir(directory) -> dict[str, np.ndarray]
      model.safetensors, or every shard named by model.safetensors.index.json
  write_safetensors(path, tensors: dict[str, np.ndarray], metadata=None)

Every structural problem (truncated file, bad header, offsets past the end, a dtype the format
does not define, a tensor in two shards, a shard the index names but the folder lacks) raises
CheckpointError naming the file and the tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file or folder is malformed or does not match the model."""


_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    size = os.path.getsize(path)
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors file")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8 or header_len > 100_000_000:
            raise CheckpointError(f"{path}: header length {header_len} exceeds the file size "
                                  f"{size} (truncated or not a safetensors file)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype_name not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
        dtype = _DTYPES[dtype_name]
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} {dtype_name} needs "
                                  f"{nbytes} bytes but its offsets span {end - begin}")
        if data_start + end > size:
            raise CheckpointError(f"{path}: tensor {name!r} ends at byte {data_start + end} but "
                                  f"the file has {size} bytes (truncated?)")
        tensors[name] = data[data_start + begin: data_start + end].view(dtype).reshape(shape)
    return tensors


def read_checkpoint_dir(directory: str) -> dict[str, np.ndarray]:
    index_path = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: not a valid shard index ({e!r})") from None
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(directory, shard)
            if not os.path.exists(shard_path):
                raise CheckpointError(f"{index_path} names shard {shard} but {shard_path} is "
                                      "missing")
            for name, array in read_safetensors(shard_path).items():
                if name in tensors:
                    raise CheckpointError(f"{shard_path}: tensor {name!r} appears in two shards")
                if weight_map.get(name) != shard:
                    raise CheckpointError(f"{shard_path}: tensor {name!r} is not mapped to this "
                                          f"shard by {index_path}")
                tensors[name] = array
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(f"{index_path}: tensors {missing[:5]} are listed but absent "
                                  "from their shards")
        return tensors
    if os.path.exists(single):
        return read_safetensors(single)
    if any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in os.listdir(directory)):
        raise CheckpointError(f"{directory}: only pickle-based weights found; these are never "
                              "loaded (they can run code). Convert them to safetensors.")
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def write_safetensors(path: str, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    arrays = []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in _NAMES:
            raise CheckpointError(f"cannot write tensor {name!r}: dtype {array.dtype}")
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data section 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for array in arrays:
            f.write(array.tobytes())
