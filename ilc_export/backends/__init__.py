"""Backends as plug-ins: each a loader and a runner, declared to the registry by a BackendSpec.

``load_backend(name, source, **options)`` gives a :class:`Runner`; ``registry.get(name)``
says what a backend loads and can do without importing it.

May import: numpy, ``ilc_export.contract`` and ``ilc_export.codec``; a backend's runtime
(onnxruntime, TensorRT, cuda-python, torch) only inside its own loader and runner, when a
model is loaded. The torch backend alone also imports the reference model (``ilc_reference``),
which it runs. Never the pipeline or the tooling (export, verify, cli).
"""
from . import registry
from .base import DEVICE_PIXELS, FUSED_TILES, MAX_SHAPE, BackendError, BackendSpec, Runner
from .registry import load_backend

__all__ = ["DEVICE_PIXELS", "FUSED_TILES", "MAX_SHAPE", "BackendError", "BackendSpec", "Runner", "load_backend",
           "registry"]
