"""Which TensorRT is installed: the flavour, its version, and what its runtime supports.

Three flavours share one API shape: ``tensorrt`` 10 (JetPack 6), ``tensorrt`` 11 (JetPack 7)
and ``tensorrt_rtx`` (RTX PCs; builds on CPU-only machines). `detect()` picks one
(``ILC_TRT_FLAVOUR=tensorrt|tensorrt_rtx`` forces the choice); the rest of the toolkit talks
to the returned :class:`Flavour` and never imports a TensorRT module itself. What the engine
builder needs on top lives with the builder (``ilc_export.export.trt_flavours``).
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from types import ModuleType

from ...contract.errors import IlcError

#: import names, in order of preference when both are installed
MODULES = ("tensorrt", "tensorrt_rtx")


class FlavourError(IlcError, RuntimeError):
    """No usable TensorRT, or the installed one cannot do what was asked."""


def normalise_cc(cc: str | int) -> str:
    """'SM86', 'sm_86', '86', '8.6', 86 -> 'SM86'."""
    s = str(cc).strip().upper().replace("_", "")
    m = re.fullmatch(r"(?:SM)?(\d+)(?:\.(\d+))?", s)
    if not m:
        raise FlavourError(f"not a compute capability: {cc!r} (write e.g. SM86, 8.6 or 86)")
    return f"SM{m.group(1)}{m.group(2) or ''}"


@dataclass
class Flavour:
    """One installed TensorRT and what its runtime supports."""

    name: str  # import name: "tensorrt" or "tensorrt_rtx"
    trt: ModuleType = field(repr=False)

    @property
    def version(self) -> str:
        return str(getattr(self.trt, "__version__", "0"))

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT 11 and TensorRT-RTX have no weak typing (no BuilderFlag.FP16)."""
        return self.is_rtx or self.major >= 11 or not hasattr(self.trt.BuilderFlag, "FP16")

    @property
    def typing(self) -> str:
        """How fp16 is built here: 'weak' (FP16 flag + constraints) or 'strong' (fp16 ONNX)."""
        return "strong" if self.strongly_typed_only else "weak"

    @property
    def supports_engine_validity(self) -> bool:
        return hasattr(self.trt.Runtime, "get_engine_validity")

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.typing}ly typed)"


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 -- ImportError, or a broken install (missing libnvinfer)
        return None


def detect(prefer: str | None = None, cls: type[Flavour] = Flavour) -> Flavour:
    """The installed TensorRT flavour. `prefer` (or $ILC_TRT_FLAVOUR) names one explicitly;
    `cls` is the class of the answer (the builder's adds what building needs)."""
    prefer = prefer or os.environ.get("ILC_TRT_FLAVOUR") or None
    names = (prefer,) if prefer else MODULES
    for n in names:
        if n not in MODULES:
            raise FlavourError(f"unknown TensorRT flavour {n!r}; choose one of {', '.join(MODULES)}")
        mod = _import(n)
        if mod is not None and hasattr(mod, "Builder"):
            return cls(n, mod)
    if prefer:
        raise FlavourError(f"TensorRT flavour {prefer!r} is not installed (pip install {prefer.replace('_', '-')}-cu12)")
    raise FlavourError(
        "no TensorRT found: install `tensorrt` (JetPack ships it; desktops: pip install tensorrt) "
        "or `tensorrt-rtx-cu12` (pip install 'ilc-export[rtx]'; builds on CPU-only machines)"
    )


def installed() -> list[str]:
    """Names of the flavours that import here."""
    return [n for n in MODULES if _import(n) is not None]
