"""Test helpers for the TensorRT tests.

`export_tiny(dir)`: a tiny random ILC exported by the real exporter (fp32 and fp16 graphs).
`to_fp16(model)`: the fp16 conversion with no fp32 islands, which the precision check must catch;
`tampered_export` puts such graphs into a copy of an export folder.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx

def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The product's fp16 conversion with no fp32 islands at all: what the precision check must catch."""
    from ilc_export.export.fp16 import convert_fp16

    return convert_fp16(model, keep_fp32=())


def export_tiny(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random ILC checkpoint exported by the real exporter (fp32 + fp16 graphs)."""
    from conftest import randomize
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.config import tiny_config
    from ilc_reference.model import build_model

    from ilc_export.export.onnx_export import export_onnx

    out_dir = Path(out_dir)
    ckpt = save_checkpoint(randomize(build_model(tiny_config()), seed=seed), out_dir / "ckpt" / "ilc-tiny")
    return export_onnx(ckpt, out_dir / "onnx", fp16=True)


def tampered_export(src: Path, dst: Path, fp16_graphs: dict[str, onnx.ModelProto]) -> Path:
    """Copy an export folder, replacing the fp16 variants of some graphs (manifest kept consistent)."""
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    for graph, model in fp16_graphs.items():
        name = f"{graph}.fp16.onnx"
        onnx.save(model, str(dst / name))
        man["precisions"]["fp16"][graph] = name
        data = (dst / name).read_bytes()
        man["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (dst / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    return dst
