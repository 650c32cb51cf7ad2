"""Safetensors files read and written with numpy + ml_dtypes only (no torch, no framework).

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header size N,
N bytes of JSON ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}),
then the raw little-endian tensor bytes, offsets counted from the end of the header. bf16 and
fp8 tensors come back as ml_dtypes arrays (numpy has no such dtypes), so a bf16 checkpoint
costs 2 bytes per parameter in host memory, and exports are written without torch.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A file that is not a readable safetensors file (truncated, corrupt, unknown dtype)."""


def _header(f, path: str) -> tuple[dict, int]:
    raw = f.read(8)
    if len(raw) != 8:
        raise SafetensorsError(f"{path}: file shorter than the 8-byte header size")
    (n,) = struct.unpack("<Q", raw)
    if n > _MAX_HEADER:
        raise SafetensorsError(f"{path}: header size {n} is implausible (not a safetensors file?)")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    return header, 8 + n


def read_metadata(path: str) -> dict[str, str]:
    """The file's `__metadata__` dict (string -> string), {} when absent."""
    with open(path, "rb") as f:
        header, _ = _header(f, path)
    return dict(header.get("__metadata__") or {})


def read_header(path: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype name, shape) without reading any tensor data."""
    with open(path, "rb") as f:
        header, _ = _header(f, path)
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


def load_file(path: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """All tensors (or those in `names`) of one safetensors file as numpy arrays in their stored
    dtype (bf16 -> ml_dtypes.bfloat16). The file is memory-mapped; each tensor is copied out."""
    with open(path, "rb") as f:
        header, start = _header(f, path)
        size = os.fstat(f.fileno()).st_size
        out: dict[str, np.ndarray] = {}
        if size == start:
            buf = b""
        else:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            for k, info in header.items():
                if k == "__metadata__" or (names is not None and k not in names):
                    continue
                try:
                    dt = _DTYPES[info["dtype"]]
                    shape = tuple(int(s) for s in info["shape"])
                    b, e = (int(x) for x in info["data_offsets"])
                except KeyError as err:
                    raise SafetensorsError(f"{path}: tensor {k} has an unknown dtype or no {err}") from None
                count = int(np.prod(shape, dtype=np.int64))
                if e - b != count * dt.itemsize or start + e > size or b < 0:
                    raise SafetensorsError(f"{path}: tensor {k} runs past the end of the file (truncated?)")
                # one expression: no view outlives it, so the mmap can be closed
                out[k] = np.frombuffer(buf, dtype=dt, count=count, offset=start + b).reshape(shape).copy()
        finally:
            if not isinstance(buf, bytes):
                buf.close()
    return out


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (numpy or ml_dtypes arrays, any layout) as one safetensors file that
    safetensors / transformers read (metadata format=pt by default)."""
    meta = {"format": "pt", **(metadata or {})}
    header: dict = {"__metadata__": {str(k): str(v) for k, v in meta.items()}}
    arrays = []
    offset = 0
    for k, x in tensors.items():
        x = np.asarray(x)
        if x.dtype not in _NAMES:
            raise SafetensorsError(f"tensor {k} has dtype {x.dtype}, which safetensors cannot store")
        x = np.ascontiguousarray(x.astype(x.dtype.newbyteorder("<"), copy=False))
        header[k] = {"dtype": _NAMES[x.dtype.newbyteorder("=")], "shape": list(x.shape),
                     "data_offsets": [offset, offset + x.nbytes]}
        arrays.append(x)
        offset += x.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for x in arrays:
            f.write(x.reshape(-1).view(np.uint8).data if x.size else b"")


def cast_for_save(x, dtype: str) -> np.ndarray:
    """`x` as float32 / bfloat16 / float16 numpy array for an export (round to nearest even)."""
    dt = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float16": np.dtype(np.float16)}.get(str(dtype))
    if dt is None:
        raise ValueError(f"export dtype {dtype!r}; use float32, bfloat16 or float16")
    x = np.asarray(x)
    if x.dtype == dt:
        return x
    return np.asarray(x, dtype=np.float32).astype(dt)
