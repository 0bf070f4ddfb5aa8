"""Shared helpers for the ONNX tests: one tiny checkpoint + export per test session.

(Named test_onnx_*.py so it sits with the tests it serves; it holds no tests itself.)
"""
from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, Path] = {}


def tiny_checkpoint(root: Path, kind: str = "ilc", seed: int = 0) -> Path:
    """A tiny model with every weight perturbed (the zero-initialised last convs too), plus fake tables."""
    import torch
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.config import tiny_config
    from ilc_reference.model import build_model

    torch.manual_seed(seed)
    model = build_model(tiny_config(kind))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tables = {"tables.demo_cdf": torch.arange(24, dtype=torch.int32).reshape(2, 12), "tables.demo_scale": torch.ones(3)}
    return save_checkpoint(model, Path(root) / f"{kind}-tiny-{seed}", extra_tensors=tables)


def tiny_export(tmp_path_factory, kind: str = "ilc", fp16: bool = True) -> tuple[Path, Path]:
    """(checkpoint, export folder), made once per session and kind."""
    import torch

    from ilc_export.export.onnx_export import export_onnx

    key = f"{kind}-{fp16}"
    if key not in _CACHE:
        torch.set_num_threads(1)
        root = tmp_path_factory.mktemp(f"onnx-{kind}")
        ckpt = tiny_checkpoint(root, kind)
        out = export_onnx(ckpt, root / "export", fp16=fp16)
        _CACHE[key] = (ckpt, out)
    return _CACHE[key]
