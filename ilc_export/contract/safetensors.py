"""The safetensors file format, as far as the contract needs it: header and dtype names.

Read without the safetensors package (a checkpoint's header says what it is, and the model
id hashes the raw tensor bytes), and written byte-deterministically.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

#: safetensors dtype name -> numpy dtype string (little-endian)
ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "|i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "|u1", "BOOL": "|b1",
}
#: numpy dtype string -> safetensors dtype name
NP_TO_ST = {np.dtype(v).str: k for k, v in ST_DTYPES.items()}
#: Largest header read: a header is JSON of names and offsets, never this big.
MAX_HEADER_BYTES = 100 * 2**20


def st_dtype(dtype) -> str | None:
    """The safetensors name of a numpy dtype (any byte order), or None."""
    return NP_TO_ST.get(np.dtype(dtype).newbyteorder("<").str)


def read_header(f, path: Path, size: int) -> tuple[object, int]:
    """(parsed JSON header, offset of the data) of an open safetensors file; ValueError naming
    `path` when it is not one. The header is returned as parsed: callers check its shape."""
    head = f.read(8)
    if len(head) != 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise ValueError(f"{path}: not a safetensors file (bad header length)")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (bad header: {e})") from e
    return header, 8 + n


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file byte-deterministically (sorted names and metadata keys).

    ``safetensors.numpy.save_file`` stores metadata in a hash map whose order varies from
    run to run, which breaks byte-identical exports; the format is simple enough to write.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        st = st_dtype(arr.dtype)
        if st is None:
            raise ValueError(f"{name}: dtype {arr.dtype} cannot be stored in safetensors")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.writelines(blobs)
