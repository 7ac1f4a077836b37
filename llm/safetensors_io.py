"""Minimal, strict safetensors reader/writer (numpy, memory-mapped; never executes code).

API:
  read_safetensors(path, *, check_finite=True) -> dict[str, np.ndarray]  read-only memmaps
  read_checkpoint_dir(directory, *, check_finite=True) -> dict[str, np.ndarray]
      model.safetensors, or every shard named by model.safetensors.index.json
  read_header(path) -> dict[str, TensorRef]     one file's tensors, header only
  checkpoint_index(directory) -> dict[str, TensorRef]   a folder's tensors, headers only
  read_tensor(ref, *, check_finite=True) -> np.ndarray   one tensor, a plain read (no mmap)
  write_safetensors(path, tensors: dict[str, np.ndarray], metadata=None)
  write_safetensors_stream(path, [(name, shape, dtype)], produce)   one tensor at a time
  check_tensor_finite(path, name, array)     CheckpointError on NaN/inf in a float tensor

Every structural problem (truncated file, bad header, a shape that is not a list of
non-negative integers, offsets that are not integers with 0 <= begin <= end or that reach past
the end, two tensors sharing bytes, a dtype the format does not define, a tensor in two
shards, a shard the index names but the folder lacks, a shard path that leaves the model folder:
absolute, `..`, a drive) raises CheckpointError(file, tensor or field, reason). With
check_finite (the default) floating-point tensors holding NaN/inf are refused as well. Shard
names are checked as written; symlinks inside the folder (the Hugging Face cache) are followed.
Paths go through `etils.epath`, so `gs://...` folders read and write like local ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct

import ml_dtypes
import numpy as np
from etils import epath

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


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are: `file`, absolute byte `offset`, `dtype`, `shape`."""
    file: str
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(path) -> dict[str, TensorRef]:
    """Every tensor of one file, from its header alone (no tensor data is read); all structural
    checks of the module docstring except NaN/inf."""
    path = epath.Path(path)
    size = path.stat().length
    if size < 8:
        raise CheckpointError(path, "", f"{size} bytes, too short for a safetensors file")
    with path.open("rb") as f:
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
    refs, spans = {}, []
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
        refs[name] = TensorRef(str(path), name, dtype, tuple(shape), data_start + begin)
    spans.sort()
    for (_, end0, first), (begin1, _, second) in zip(spans, spans[1:]):
        if begin1 < end0:
            raise CheckpointError(path, f"tensor {second!r}", f"byte range overlaps tensor "
                                  f"{first!r} (aliased weights)")
    return refs


def read_tensor(ref: TensorRef, *, check_finite: bool = True) -> np.ndarray:
    """One tensor read into a fresh host array (a plain read of its bytes, through epath: no
    memory map, so only this tensor is ever resident); NaN/inf refused with check_finite."""
    out = np.empty(ref.shape, ref.dtype)
    with epath.Path(ref.file).open("rb") as f:
        f.seek(ref.offset)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < ref.nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise CheckpointError(ref.file, f"tensor {ref.name!r}", "file ended early")
            got += n
    if check_finite:
        check_tensor_finite(ref.file, ref.name, out)
    return out


def read_safetensors(path: str, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Tensors of one file: read-only memmapped views for a local file, read arrays otherwise.
    check_finite: also read every floating-point value once and refuse NaN/inf."""
    refs = read_header(path)
    local = os.path.exists(path)
    data = (np.memmap(path, dtype=np.uint8, mode="r")
            if local and any(r.nbytes for r in refs.values()) else None)
    tensors = {}
    for name, ref in refs.items():
        if data is None or not local:
            tensors[name] = (read_tensor(ref, check_finite=False) if ref.nbytes or not local
                             else np.zeros(ref.shape, ref.dtype))
        else:
            tensors[name] = data[ref.offset: ref.offset + ref.nbytes].view(ref.dtype).reshape(
                ref.shape)
        if check_finite:
            check_tensor_finite(path, name, tensors[name])
    return tensors


def _shard_path(directory, index_path, shard) -> str:
    """The shard's path, refusing names that leave the model folder (absolute, `..`)."""
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(index_path, "weight_map", f"shard name {shard!r} is not a file name")
    parts = shard.replace("\\", "/").split("/")
    if os.path.isabs(shard) or shard.startswith(("/", "\\")) or ".." in parts or ":" in shard:
        raise CheckpointError(index_path, "weight_map", f"shard path {shard!r} points outside "
                              f"the model folder {directory}")
    return str(epath.Path(directory) / shard)


def checkpoint_index(directory) -> dict[str, TensorRef]:
    """Every tensor of an HF folder (model.safetensors, or the shards that
    model.safetensors.index.json names), from the headers alone: no tensor data is read."""
    folder = epath.Path(directory)
    index_path, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:
            raise CheckpointError(index_path, "", f"not a valid shard index ({e!r})") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(index_path, "weight_map", "is not an object")
        paths = {shard: _shard_path(directory, index_path, shard)
                 for shard in set(weight_map.values())}
        refs: dict[str, TensorRef] = {}
        for shard in sorted(paths):
            shard_path = paths[shard]
            if not epath.Path(shard_path).exists():
                raise CheckpointError(index_path, "weight_map", f"names shard {shard} but "
                                      f"{shard_path} is missing")
            for name, ref in read_header(shard_path).items():
                if name in refs:
                    raise CheckpointError(shard_path, f"tensor {name!r}", "appears in two shards")
                if weight_map.get(name) != shard:
                    raise CheckpointError(shard_path, f"tensor {name!r}", "is not mapped to this "
                                          f"shard by {index_path}")
                refs[name] = ref
        missing = sorted(set(weight_map) - set(refs))
        if missing:
            raise CheckpointError(index_path, f"tensors {missing[:5]}",
                                  "listed but absent from their shards")
        return refs
    if single.exists():
        return read_header(single)
    if any(f.name.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in folder.iterdir()):
        raise CheckpointError(directory, "", "only pickle-based weights found; these are never "
                              "loaded (they can run code). Convert them to safetensors.")
    raise CheckpointError(directory, "", "no model.safetensors or model.safetensors.index.json")


def read_checkpoint_dir(directory: str, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of an HF folder at once (`checkpoint_index` + `read_safetensors` per file).
    Loading a model for training reads tensor by tensor instead (`llm.checkpoints`)."""
    refs = checkpoint_index(directory)
    files = {ref.file for ref in refs.values()}
    tensors = {}
    for file in sorted(files):
        tensors.update(read_safetensors(file, check_finite=check_finite))
    return tensors


def write_safetensors_stream(path, specs, produce, metadata: dict[str, str] | None = None
                             ) -> None:
    """Write a safetensors file one tensor at a time: `specs` is [(name, shape, dtype)] in file
    order, `produce(name)` returns that tensor (called once each, in order), so only one tensor
    is on the host at a time. Writes through epath (local or object-store paths)."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        dtype = np.dtype(dtype)
        if dtype not in _NAMES:
            raise CheckpointError(path, f"tensor {name!r}", f"cannot write dtype {dtype}")
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data section 8-byte aligned
    with epath.Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype in specs:
            array = np.ascontiguousarray(produce(name), dtype)
            if array.shape != tuple(shape):
                raise CheckpointError(path, f"tensor {name!r}", f"produced shape {array.shape}, "
                                      f"declared {tuple(shape)}")
            f.write(array.tobytes())


def write_safetensors(path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    write_safetensors_stream(path, [(n, a.shape, a.dtype) for n, a in arrays.items()],
                             arrays.__getitem__, metadata)
