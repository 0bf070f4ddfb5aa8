"""The backend registry: every backend by name, with what it declares (its BackendSpec).

Callers ask the registry (``get("trt").capabilities``, ``for_source("onnx")``,
``load_backend(name, source)``), never a backend module. A new backend is a package with a
``SPEC`` (its loader and runner beside it) listed in PLUGINS; no caller changes.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from .base import ENCODER_ADDON, REFINE, BackendError, BackendSpec, Runner

#: backend packages, in the order automatic selection prefers them
PLUGINS = ("ilc_export.backends.pytorch", "ilc_export.backends.onnxrt", "ilc_export.backends.tensorrt")

_SPECS: dict[str, BackendSpec] | None = None


def specs() -> dict[str, BackendSpec]:
    """name -> spec, in preference order. Imports each package's ``__init__`` only (light)."""
    global _SPECS
    if _SPECS is None:
        found = [importlib.import_module(p).SPEC for p in PLUGINS]
        _SPECS = {s.name: s for s in found}
    return _SPECS


def names() -> tuple[str, ...]:
    return tuple(specs())


def aliases() -> dict[str, str]:
    """alias -> backend name."""
    return {a: s.name for s in specs().values() for a in s.aliases}


def canonical(name: str) -> str | None:
    """The backend's name for a name or alias (any case), or None when there is no such backend."""
    key = name.lower()
    key = aliases().get(key, key)
    return key if key in specs() else None


def get(name: str) -> BackendSpec:
    """The spec of a backend by name or alias; BackendError naming the choices otherwise."""
    key = canonical(name)
    if key is None:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(specs())}")
    return specs()[key]


def for_source(kind: str) -> BackendSpec:
    """The backend that loads a source of this kind ("checkpoint", "onnx", "engines")."""
    for s in specs().values():
        if s.source == kind:
            return s
    raise BackendError(f"no backend loads {kind!r} sources")


def load_backend(name: str, source: str | Path, **options) -> Runner:
    """Load `source` (checkpoint, ONNX export folder or engine folder) with backend `name`."""
    spec = get(name)
    if options.get("refine") and REFINE not in spec.capabilities:
        able = ", ".join(s.name for s in specs().values() if REFINE in s.capabilities)
        raise BackendError(f"--refine needs gradients through the model: the {spec.name} backend cannot refine; "
                           f"encode with {able} (any backend decodes the file)")
    if options.get("encoder_addon") is False and ENCODER_ADDON not in spec.capabilities:
        raise BackendError(f"--no-encoder-addon applies to checkpoints: the {spec.name} backend runs an export, whose "
                           "forward graph has the add-on or not (ilc-export onnx --no-encoder-addon)")
    return spec.load(source, **options)
