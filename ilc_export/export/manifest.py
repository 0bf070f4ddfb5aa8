"""The export manifest: what a deployed ONNX folder contains and how to trust it.

Torch-free: the onnxruntime backend reads and checks manifests on a box without PyTorch.

Layout of an export folder (see docs/onnx.md)::

    manifest.json          this file's content (format below)
    forward.onnx           image -> y, z, w                 (fp32)
    hyper_mean.onnx        w_hat -> mu                      (fp32)
    inverse.onnx           y_hat, z -> image                (fp32)
    forward.fp16.onnx      fp16 graph with fp32 islands     (only with --fp16)
    inverse.fp16.onnx      fp16 graph with fp32 islands     (only with --fp16)
    tables.safetensors     the checkpoint's ``tables.*`` tensors (codec tables)

The fp16 variant of ``hyper_mean`` is the fp32 file itself (the whole graph stays fp32),
so ``manifest["precisions"]["fp16"]["hyper_mean"]`` names ``hyper_mean.onnx``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..codec.tables import model_id_of_file  # noqa: F401  (the codec core owns the model id; re-exported)

MANIFEST_NAME = "manifest.json"
TABLES_NAME = "tables.safetensors"
FORMAT = "ilc-onnx-export"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16")


class ManifestError(ValueError):
    """A manifest is missing, malformed, from a future version, or does not match its files."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "int16": "I16",
    "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
}


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file byte-deterministically (sorted names and metadata keys).

    ``safetensors.numpy.save_file`` stores metadata in a hash map whose order varies from
    run to run, which breaks byte-identical exports; the format is simple enough to write.
    """
    import numpy as np

    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype.name not in _ST_DTYPES:
            raise ValueError(f"{name}: dtype {arr.dtype} cannot be stored in safetensors")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _ST_DTYPES[arr.dtype.name], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.writelines(blobs)


def read_manifest(folder: Path) -> dict:
    """Read and sanity-check ``folder/manifest.json`` (not the file hashes: see verify_files)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder (expected an ONNX export folder with {MANIFEST_NAME})")
    if not path.exists():
        raise ManifestError(f"{folder}: no {MANIFEST_NAME} (not an ONNX export folder)")
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ManifestError(f"{path}: not an ILC ONNX export manifest (format {m.get('format') if isinstance(m, dict) else None!r})")
    v = m.get("format_version")
    if not isinstance(v, int) or v > FORMAT_VERSION:
        raise ManifestError(f"{path}: manifest format version {v!r} is newer than this toolkit supports ({FORMAT_VERSION}); upgrade ilc-export")
    for key in ("model_id", "config", "graphs", "files", "precisions"):
        if key not in m:
            raise ManifestError(f"{path}: manifest lacks {key!r}")
    return m


def verify_files(folder: Path, manifest: dict, names: list[str] | None = None) -> None:
    """Check size and sha256 of the listed files (all when names is None) against the manifest."""
    folder = Path(folder)
    files = manifest["files"]
    for name in names if names is not None else sorted(files):
        if name not in files:
            raise ManifestError(f"{folder / MANIFEST_NAME}: {name} is not listed in the manifest")
        p = folder / name
        if not p.exists():
            raise ManifestError(f"{p}: missing (listed in {MANIFEST_NAME})")
        want = files[name]
        size = p.stat().st_size
        if size != want["bytes"]:
            raise ManifestError(
                f"{p}: size {size} bytes does not match the manifest ({want['bytes']} bytes); "
                "the file is corrupted or from another export"
            )
        got = sha256_file(p)
        if got != want["sha256"]:
            raise ManifestError(
                f"{p}: sha256 {got[:16]}... does not match the manifest ({want['sha256'][:16]}...); "
                "the file is corrupted or from another export"
            )


def graph_file(manifest: dict, graph: str, precision: str = "fp32") -> str:
    prec = manifest["precisions"]
    if precision not in prec:
        have = ", ".join(sorted(prec))
        hint = " (export with --fp16)" if precision == "fp16" else ""
        raise ManifestError(f"this export has no {precision} graphs{hint}; it has: {have}")
    return prec[precision][graph]
