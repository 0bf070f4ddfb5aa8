"""One interface for every backend (torch, ONNX Runtime, TensorRT), Polygraphy-style.

A backend is a *loader* (``load(source, **options) -> Runner``) plus a *runner* that
executes the model's named graphs (:mod:`ilc_export.contract.graphs`) on numpy arrays, and
a :class:`BackendSpec` that declares, without importing either, what it loads and what it
can do. Runners know nothing about files of images or bitstreams; the pipeline knows
nothing about which runner it drives. H and W must be multiples of
``ilc_export.contract.geometry.PAD_MULTIPLE``.

Capabilities (``Runner.capabilities``, declared by each runner and by its spec): callers
check these, never the backend's name.
  FUSED_TILES: ``encode_tile`` / ``decode_tile`` code one tile in one call with the
    intermediates (y, z, mu, y_hat) kept where the runner computes them (a GPU), so only the
    pixels, w / w_hat and the integer symbols cross to the host. They must give exactly the
    symbols and pixels the host path (``run`` per graph + the codec's quantizers) gives on
    the same device.
  DEVICE_PIXELS (with FUSED_TILES): encode_tile takes the tile's uint8 pixels (H,W,3) and
    decode_tile returns uint8 pixels (H,W,3): the conversions to and from the model's float
    range run on the device too, with exactly the rule of ``pipeline.image_io`` (to_nchw,
    from_nchw, and NaN -> 0, +-inf -> 1 / 0), so only a quarter of the bytes cross.
  MAX_SHAPE: the runner takes images up to ``max_image_size()`` (height, width) only (a
    TensorRT engine's optimisation profile); the pipeline tiles larger images to fit.
  REFINE (with FUSED_TILES): the loader takes ``refine=N`` (and ``refine_lr``): encode_tile
    then spends N gradient steps choosing the y that its own decoder reconstructs best for
    the rate, over the tile's ``valid`` region (the file format and every decoder stay as they
    are; only encoding is slower). ``refines`` says whether this runner was loaded so; only
    encode_tile refines, never the per-graph ``run``.
  ENCODER_ADDON: the loader takes ``encoder_addon=False``: encode without the encoder add-on
    that sits next to a checkpoint (``ilc_export.contract.encoder_addon``). Backends of exports
    have none to drop: an export has the add-on in its forward graph or not (``ilc-export onnx
    --no-encoder-addon``).
"""
from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract.errors import IlcError
from ..contract.graphs import GRAPHS

#: capability name: the runner implements encode_tile / decode_tile
FUSED_TILES = "fused_tiles"
#: capability name: encode_tile / decode_tile take and return uint8 pixels
DEVICE_PIXELS = "device_pixels"
#: capability name: the runner takes images up to max_image_size() only
MAX_SHAPE = "max_shape"
#: capability name: the loader takes refine=N (encoder-side latent refinement, needs gradients)
REFINE = "refine"
#: capability name: the loader takes encoder_addon=False (encode without the checkpoint's add-on)
ENCODER_ADDON = "encoder_addon"

#: what a backend loads (the kinds of model source; see ilc_export.pipeline.models.source_kind)
CHECKPOINT, ONNX_EXPORT, ENGINES = "checkpoint", "onnx", "engines"


class BackendError(IlcError, RuntimeError):
    """A backend cannot load or run a model (missing runtime, wrong files, bad shapes)."""


class Runner(ABC):
    """Executes the model's graphs. Created once per model and reused across images."""

    #: backend name, e.g. "torch"
    name: str = ""
    #: what this runner can do beyond ``run`` (see the module docstring)
    capabilities: frozenset[str] = frozenset()
    #: where the transforms run, for reports: "cpu", "cuda:0", "CUDAExecutionProvider", ...
    device: str = "cpu"

    def __init__(self, source: Path, model_id: str, config):
        self.source = Path(source)
        self.model_id = model_id  # hex string, identifies weights + codec tables
        self.config = config  # ilc_export.contract.config.ModelConfig

    @abstractmethod
    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph; feeds and results are float32 numpy arrays keyed by tensor name."""

    @property
    def refines(self) -> bool:
        """REFINE: does encode_tile refine the latents (loaded with refine=N > 0)?"""
        return False

    def encode_tile(self, image: np.ndarray, quantize_w,
                    valid: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FUSED_TILES: image (1,3,H,W) float32 (DEVICE_PIXELS: (H,W,3) uint8) -> (w_hat
        (Nh,h/4,w/4) int32, y symbols (M,h,w) int32). ``quantize_w`` (the codec's, on the host) turns w into w_hat; the y symbols are
        round(y - mu) exactly as ``EntropyCodec.quantize_y`` computes them. valid: (rows, columns)
        of the tile that lie inside the image (None: all of it); the rest is edge-replicated
        padding, which only a refining runner looks at (it measures distortion inside valid)."""
        raise NotImplementedError(f"{self.name} runner does not declare {FUSED_TILES}")

    def decode_tile(self, w_hat: np.ndarray, y_sym: np.ndarray, z) -> np.ndarray:
        """FUSED_TILES: (w_hat, y symbols, z) -> image (1,3,H,W) float32, not clipped
        (DEVICE_PIXELS: (H,W,3) uint8).
        z: the surrogate z (1,Z,h,w) float32, or its shape tuple for z = 0 (made on the device)."""
        raise NotImplementedError(f"{self.name} runner does not declare {FUSED_TILES}")

    def max_image_size(self) -> tuple[int, int]:
        """MAX_SHAPE: the largest padded (height, width) this runner takes."""
        raise NotImplementedError(f"{self.name} runner does not declare {MAX_SHAPE}")

    def tables_path(self) -> Path:
        """The safetensors file holding the codec tables for this model."""
        raise NotImplementedError

    def close(self) -> None:  # release sessions/engines
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def check_graph(graph: str, feeds: dict[str, np.ndarray]) -> None:
        if graph not in GRAPHS:
            raise BackendError(f"unknown graph {graph!r}; expected one of {sorted(GRAPHS)}")
        want = set(GRAPHS[graph][0])
        if set(feeds) != want:
            raise BackendError(f"graph {graph!r} takes inputs {sorted(want)}, got {sorted(feeds)}")


@dataclass(frozen=True)
class BackendSpec:
    """A backend as the registry knows it, declared without importing its loader or runner
    (so asking what a backend can do never imports torch, onnxruntime or TensorRT)."""

    name: str
    #: "module:function" of the loader: ``load(source: Path, **options) -> Runner``
    loader: str
    #: what it loads: CHECKPOINT, ONNX_EXPORT or ENGINES
    source: str
    #: that source in words, for messages ("an ONNX export folder")
    source_noun: str
    #: the command that makes the source from a checkpoint ("" for a checkpoint itself)
    make: str = ""
    aliases: tuple[str, ...] = ()
    #: what its runners declare (FUSED_TILES, DEVICE_PIXELS, MAX_SHAPE)
    capabilities: frozenset[str] = frozenset()
    #: precisions it runs
    precisions: tuple[str, ...] = ("fp32",)
    #: top-level modules that must be importable for it to load anything, and their name in words
    requires: tuple[str, ...] = ()
    requires_name: str = ""
    #: how to install them
    install: str = ""
    #: it runs on a GPU unless told otherwise (a cluster reserves one for it)
    gpu_by_default: bool = False

    def available(self) -> bool:
        """Are the modules it requires importable here? (Looked up, not imported.)"""
        for mod in self.requires:
            try:
                if importlib.util.find_spec(mod) is None:
                    return False
            except (ImportError, ValueError):
                return False
        return True

    def load(self, source: str | Path, **options) -> Runner:
        """Import the loader (only now) and load `source` with it."""
        mod, fn = self.loader.split(":")
        try:
            module = importlib.import_module(mod)
        except ImportError as e:
            raise BackendError(f"backend {self.name!r} is not available: {e}") from e
        return getattr(module, fn)(Path(source), **options)
