"""Minimal, strict safetensors reader/writer (numpy, memory-mapped; never executes code).

API:
  read_safetensors(path, *, check_finite=True) -> dict[str, np.ndarray]  read-only memmaps
  read_checkpoint_dir(directory, *, check_finite=True) -> dict[str, np.ndarray]
      model.safetensors, or every shard named by model.safetensors.index.json
  write_safetensors(path, tensors: dict[str, np.ndarray], metadata=None)
  check_tensor_finite(path, name, array)     CheckpointError on NaN/inf in a float tensor

Every structural problem (truncated file, bad header, a shape that is not a list of
non-negative integers, offsets that are not integers with 0 <= begin <= end or that reach past
the end, two tensors sharing bytes, a dtype the format does not define, a tensor in two
shards, a shard the index names but the folder lacks, a shard path that leaves the model folder:
absolute, `..`, a drive) raises CheckpointError(file, tensor or field, reason). With
check_finite (the default) floating-point tensors holding NaN/inf are refused as well. Shard
names are checked as written; symlinks inside the folder (the Hugging Face cache) are followed.
"""

from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from modeseek._checks import is_int


class CheckpointError(ValueError):
    """A checkpoint file or folder is malformed or does not match the model.

    `CheckpointError(file, what, reason)`: `what` names the tensor or config field at fault
    ("" for the file as a whole); `str(e)` reads "file: what: reason". The attributes `file`,
    `what` and `reason` carry the three parts. A single preformatted message is accepted too
    (then `file` and `what` are None).
    """

    def __init__(self, file, what: str | None = None, reason: str | None = None):
        if reason is None:
            self.file, self.what, self.reason = None, None, str(file)
            super().__init__(str(file))
            return
        self.file, self.what, self.reason = str(file), what or "", reason
        super().__init__(f"{file}: {what}: {reason}" if what else f"{file}: {reason}")


_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_FLOAT_NAMES = ("F64", "F32", "F16", "BF16")


def _entry(path: str, name: str, info) -> tuple[str, list[int], int, int]:
    """(dtype name, shape, begin, end) of one header entry, every field type-checked."""
    if not isinstance(info, dict):
        raise CheckpointError(path, f"tensor {name!r}", "header entry is not an object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise CheckpointError(path, f"tensor {name!r}", f"header entry lacks {missing}")
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype_name not in _DTYPES:
        raise CheckpointError(path, f"tensor {name!r}", f"unsupported dtype {dtype_name!r}")
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(path, f"tensor {name!r}",
                              f"shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(is_int(o) for o in offsets)):
        raise CheckpointError(path, f"tensor {name!r}",
                              f"data_offsets {offsets!r} is not a pair of integers")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise CheckpointError(path, f"tensor {name!r}",
                              f"data_offsets {offsets!r} must satisfy 0 <= begin <= end")
    return dtype_name, shape, begin, end


def check_tensor_finite(path: str, name: str, array: np.ndarray) -> None:
    """CheckpointError naming the tensor when a floating-point tensor holds NaN or inf."""
    if array.dtype.kind == "f" or array.dtype == _DTYPES["BF16"]:
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise CheckpointError(path, f"tensor {name!r}", f"{bad} of {np.size(array)} values "
                                  "are NaN or inf (pass check_finite=False to load anyway)")


def read_safetensors(path: str, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Tensors of one file as read-only memmapped views. check_finite: also read every
    floating-point value once and refuse NaN/inf (off: no full pass over the data)."""
    size = os.path.getsize(path)
    if size < 8:
        raise CheckpointError(path, "", f"{size} bytes, too short for a safetensors file")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8 or header_len > 100_000_000:
            raise CheckpointError(path, "", f"header length {header_len} exceeds the file size "
                                  f"{size} (truncated or not a safetensors file)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(path, "header", f"not valid JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "header", "not a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    tensors, spans = {}, []
    for name, info in header.items():
        dtype_name, shape, begin, end = _entry(path, name, info)
        dtype = _DTYPES[dtype_name]
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise CheckpointError(path, f"tensor {name!r}", f"shape {shape} {dtype_name} needs "
                                  f"{nbytes} bytes but its offsets span {end - begin}")
        if data_start + end > size:
            raise CheckpointError(path, f"tensor {name!r}", f"ends at byte {data_start + end} "
                                  f"but the file has {size} bytes (truncated?)")
        if nbytes:
            spans.append((begin, end, name))
        tensors[name] = data[data_start + begin: data_start + end].view(dtype).reshape(shape)
    spans.sort()
    for (_, end0, first), (begin1, _, second) in zip(spans, spans[1:]):
        if begin1 < end0:
            raise CheckpointError(path, f"tensor {second!r}", f"byte range overlaps tensor "
                                  f"{first!r} (aliased weights)")
    if check_finite:
        for name, info in header.items():
            if info["dtype"] in _FLOAT_NAMES:
                check_tensor_finite(path, name, tensors[name])
    return tensors


def _shard_path(directory: str, index_path: str, shard) -> str:
    """The shard's path, refusing names that leave the model folder (absolute, `..`)."""
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(index_path, "weight_map", f"shard name {shard!r} is not a file name")
    parts = shard.replace("\\", "/").split("/")
    if os.path.isabs(shard) or shard.startswith(("/", "\\")) or ".." in parts or ":" in shard:
        raise CheckpointError(index_path, "weight_map", f"shard path {shard!r} points outside "
                              f"the model folder {directory}")
    return os.path.join(directory, shard)


def read_checkpoint_dir(directory: str, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    index_path = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:
            raise CheckpointError(index_path, "", f"not a valid shard index ({e!r})") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(index_path, "weight_map", "is not an object")
        paths = {shard: _shard_path(directory, index_path, shard)
                 for shard in set(weight_map.values())}
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(paths):
            shard_path = paths[shard]
            if not os.path.exists(shard_path):
                raise CheckpointError(index_path, "weight_map", f"names shard {shard} but "
                                      f"{shard_path} is missing")
            for name, array in read_safetensors(shard_path, check_finite=check_finite).items():
                if name in tensors:
                    raise CheckpointError(shard_path, f"tensor {name!r}", "appears in two shards")
                if weight_map.get(name) != shard:
                    raise CheckpointError(shard_path, f"tensor {name!r}", "is not mapped to this "
                                          f"shard by {index_path}")
                tensors[name] = array
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(index_path, f"tensors {missing[:5]}",
                                  "listed but absent from their shards")
        return tensors
    if os.path.exists(single):
        return read_safetensors(single, check_finite=check_finite)
    if any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in os.listdir(directory)):
        raise CheckpointError(directory, "", "only pickle-based weights found; these are never "
                              "loaded (they can run code). Convert them to safetensors.")
    raise CheckpointError(directory, "", "no model.safetensors or model.safetensors.index.json")


def write_safetensors(path: str, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    arrays = []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in _NAMES:
            raise CheckpointError(path, f"tensor {name!r}", f"cannot write dtype {array.dtype}")
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
