"""Backend registry. New backends register a loader here; callers never change."""
from __future__ import annotations

import importlib
from pathlib import Path

from .base import DEVICE_PIXELS, FUSED_TILES, GRAPHS, BackendError, Runner

# name -> "module:function"; modules are imported only when asked for, so the
# onnxruntime backend never imports torch and vice versa.
_LOADERS = {
    "torch": "ilc_export.backends.torch_backend:load",
    "onnxruntime": "ilc_export.backends.ort_backend:load",
    "tensorrt": "ilc_export.backends.trt_backend:load",
}
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def available_backends() -> list[str]:
    return list(_LOADERS)


def load_backend(name: str, source: str | Path, **options) -> Runner:
    """Load `source` (checkpoint, ONNX export folder or engine folder) with backend `name`."""
    name = ALIASES.get(name, name)
    if name not in _LOADERS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(_LOADERS)}")
    mod, fn = _LOADERS[name].split(":")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise BackendError(f"backend {name!r} is not available: {e}") from e
    return getattr(module, fn)(Path(source), **options)


__all__ = ["DEVICE_PIXELS", "FUSED_TILES", "GRAPHS", "BackendError", "Runner", "load_backend", "available_backends"]
