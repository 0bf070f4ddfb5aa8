"""The model id: which weights, codec tables and architecture a bitstream was made with.

A .ilc file names its model by this id, an export's manifest carries it, and a decoder
refuses a file whose id is not the model's. numpy only.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from .safetensors import read_header, st_dtype

#: Checkpoint keys under this prefix are the codec's integer tables (not model weights).
TABLE_PREFIX = "tables."
#: Bytes of sha256 kept as the model id.
MODEL_ID_BYTES = 16
# Config fields that only steer training; everything else in the checkpoint's config
# changes what the transforms compute, so it is part of the id.
TRAINING_ONLY_FIELDS = ("name", "lmbda", "beta")
_ID_DOMAIN = b"ILC-MODEL-ID-2\0"


def _hash_entry(h, key: str, st_dtype_name: str, shape, data: bytes | memoryview) -> None:
    kb = key.encode("utf-8")
    db = st_dtype_name.encode("ascii")
    h.update(struct.pack("<I", len(kb)) + kb)
    h.update(struct.pack("<I", len(db)) + db)
    h.update(struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", int(d)) for d in shape))
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def _config_bytes(config: str | dict | None) -> bytes:
    """Canonical bytes of the decode-relevant config (sorted keys, training-only fields dropped)."""
    if config is None:
        return b""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as e:
            raise ValueError(f"checkpoint config is not JSON: {e}") from e
    if not isinstance(config, dict):
        raise ValueError("checkpoint config is not a JSON object")
    arch = {k: v for k, v in config.items() if k not in TRAINING_ONLY_FIELDS}
    return json.dumps(arch, sort_keys=True, separators=(",", ":")).encode()


def _new_id_hash(config) -> "hashlib._Hash":
    h = hashlib.sha256(_ID_DOMAIN)
    cb = _config_bytes(config)
    h.update(struct.pack("<Q", len(cb)) + cb)
    return h


def compute_model_id(tensors: dict[str, np.ndarray], config: str | dict | None = None) -> str:
    """Model id of a set of tensors and their model config: sha256 over the config's
    architecture fields (canonical JSON) and the sorted (key, dtype, shape, bytes) of every
    tensor (weights and tables alike), first 16 bytes as 32 hex characters.

    The config counts because two checkpoints with equal tensors but, say, another
    coupling clamp decode differently; the file's other metadata (training info) does not.
    dtype is the safetensors name (F32, I32, ...); bytes are little-endian C order, so
    the id equals :func:`model_id_of_file` of a safetensors file holding the same tensors
    with this config in its metadata.
    """
    h = _new_id_hash(config)
    for key in sorted(tensors):
        a = np.asarray(tensors[key])
        dt = a.dtype.newbyteorder("<")
        a = np.ascontiguousarray(a.astype(dt, copy=False))
        st = st_dtype(dt)
        if st is None:
            raise TypeError(f"tensor {key!r}: dtype {a.dtype} has no safetensors equivalent")
        _hash_entry(h, key, st, a.shape, a.tobytes())
    return h.digest()[:MODEL_ID_BYTES].hex()


def model_id_of_file(path: str | Path) -> str:
    """Model id of a safetensors checkpoint: its tensors and the ``config`` metadata entry.

    Reads the safetensors header directly, so it works for any dtype (bf16 included)
    and never loads the whole file into numpy.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        header, base = read_header(f, path, size)
        if not isinstance(header, dict):
            raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
        meta = header.get("__metadata__") or {}
        try:
            h = _new_id_hash(meta.get("config") if isinstance(meta, dict) else None)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        for key in sorted(k for k in header if k != "__metadata__"):
            try:
                info = header[key]
                start, end = (int(x) for x in info["data_offsets"])
                dtype, shape = str(info["dtype"]), [int(d) for d in info["shape"]]
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}: not a safetensors file (bad entry for {key!r})") from e
            if not 0 <= start <= end or base + end > size:
                raise ValueError(f"{path}: tensor {key!r} lies outside the file")
            f.seek(base + start)
            _hash_entry(h, key, dtype, shape, f.read(end - start))
    return h.digest()[:MODEL_ID_BYTES].hex()
