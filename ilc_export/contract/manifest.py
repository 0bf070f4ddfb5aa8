"""Manifests: what a deployed model folder holds and how to trust it.

Two kinds of folder carry a ``manifest.json``; its ``format`` says which:

- an ONNX export (``ilc-export onnx``; see docs/onnx.md)::

    manifest.json          this file's content
    forward.onnx           image -> y, z, w                 (fp32)
    hyper_mean.onnx        w_hat -> mu                      (fp32)
    inverse.onnx           y_hat, z -> image                (fp32)
    forward.fp16.onnx      fp16 graph with fp32 islands     (only with --fp16)
    inverse.fp16.onnx      fp16 graph with fp32 islands     (only with --fp16)
    tables.safetensors     the checkpoint's ``tables.*`` tensors (codec tables)

  The fp16 variant of ``hyper_mean`` is the fp32 file itself (the whole graph stays fp32),
  so ``manifest["precisions"]["fp16"]["hyper_mean"]`` names ``hyper_mean.onnx``.
- a TensorRT engine folder (``ilc-export trt``): one engine per graph, the codec tables and
  the build record.

Both name the model by its id (:mod:`.model_id`). This module is the one reader and writer.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import IlcError
from .files import sha256_file, write_atomic

MANIFEST_NAME = "manifest.json"
TABLES_NAME = "tables.safetensors"
ONNX_FORMAT = "ilc-onnx-export"
ENGINE_FORMAT = "ilc-trt-engines"
#: newest manifest version this code reads (and the one it writes), per format
FORMAT_VERSIONS = {ONNX_FORMAT: 1, ENGINE_FORMAT: 1}
#: what a folder of each format is called in messages
_NOUN = {ONNX_FORMAT: ("an", "ONNX export"), ENGINE_FORMAT: ("a", "TensorRT engine"), None: ("an", "ONNX export or engine")}
#: keys every manifest of the format has
_REQUIRED = {ONNX_FORMAT: ("model_id", "config", "graphs", "files", "precisions"), ENGINE_FORMAT: ()}
#: precisions of the graphs an export may hold
PRECISIONS = ("fp32", "fp16")


class ManifestError(IlcError, ValueError):
    """A manifest is missing, malformed, from a future version, or does not match its files."""


def peek_manifest(folder: str | Path) -> dict | None:
    """folder/manifest.json as a dict; None when it is missing or not a JSON object (to look
    at many folders; :func:`read_manifest` to use one)."""
    try:
        m = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def manifest_format(folder: str | Path) -> str | None:
    """ONNX_FORMAT, ENGINE_FORMAT, another string, or None (no readable manifest)."""
    return (peek_manifest(folder) or {}).get("format")


def read_manifest(folder: str | Path, fmt: str | None = ONNX_FORMAT) -> dict:
    """Read and sanity-check ``folder/manifest.json`` of format `fmt` (None: either kind).

    Checks the format, that its version is not newer than this code, and the keys the
    format requires; not the file hashes (see :func:`verify_files`)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    article, noun = _NOUN[fmt]
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder (expected {article} {noun} folder with {MANIFEST_NAME})")
    if not path.exists():
        raise ManifestError(f"{folder}: no {MANIFEST_NAME} (not {article} {noun} folder)")
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable manifest ({e})") from e
    got = m.get("format") if isinstance(m, dict) else None
    if got not in FORMAT_VERSIONS or (fmt is not None and got != fmt):
        raise ManifestError(f"{path}: not an ILC {noun} manifest (format {got!r})")
    v = m.get("format_version")
    if not isinstance(v, int) or v > FORMAT_VERSIONS[got]:
        raise ManifestError(f"{path}: manifest format version {v!r} is newer than this ilc-export supports "
                            f"({FORMAT_VERSIONS[got]}); upgrade ilc-export")
    for key in _REQUIRED[got]:
        if key not in m:
            raise ManifestError(f"{path}: manifest lacks {key!r}")
    return m


def write_manifest(folder: str | Path, manifest: dict, sort_keys: bool = True) -> Path:
    """Write ``folder/manifest.json`` atomically (indented JSON and a final newline)."""
    text = json.dumps(manifest, indent=2, sort_keys=sort_keys) + "\n"
    return write_atomic(Path(folder) / MANIFEST_NAME, text.encode())


def file_record(path: str | Path) -> dict:
    """The manifest's entry for one file: its sha256 and size."""
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


def verify_files(folder: str | Path, manifest: dict, names: list[str] | None = None) -> None:
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
    """The ONNX file of `graph` at `precision`; ManifestError when the export lacks it."""
    prec = manifest["precisions"]
    if precision not in prec:
        have = ", ".join(sorted(prec))
        hint = " (export with --fp16)" if precision == "fp16" else ""
        raise ManifestError(f"this export has no {precision} graphs{hint}; it has: {have}")
    return prec[precision][graph]
