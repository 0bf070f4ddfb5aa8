"""One interface for every backend (torch, ONNX Runtime, TensorRT), Polygraphy-style.

A backend is a *loader* (``load(source, **options) -> Runner``) plus a *runner* that
executes the model's named graphs on numpy arrays. Runners know nothing about files
of images or bitstreams; the pipeline knows nothing about which runner it drives.

Graphs (names, inputs, outputs; all float32, NCHW; h = H/16, w = W/16):
  forward:    image (B,3,H,W) in [0,1]  -> y (B,M,h,w), z (B,Z,h,w), w (B,Nh,h/4,w/4)
  hyper_mean: w_hat (B,Nh,h/4,w/4)      -> mu (B,M,h,w)
  inverse:    y_hat (B,M,h,w), z (B,Z,h,w) -> image (B,3,H,W) (not clipped)
H and W must be multiples of ilc_export.contract.geometry.PAD_MULTIPLE.
The scale branch is not a graph: the codec core runs it as an exact integer network.

Capabilities (``Runner.capabilities``, declared by each runner, Polygraphy-style): callers
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
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..contract.graphs import GRAPHS

#: capability name: the runner implements encode_tile / decode_tile
FUSED_TILES = "fused_tiles"
#: capability name: encode_tile / decode_tile take and return uint8 pixels
DEVICE_PIXELS = "device_pixels"


class BackendError(RuntimeError):
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

    def encode_tile(self, image: np.ndarray, quantize_w) -> tuple[np.ndarray, np.ndarray]:
        """FUSED_TILES: image (1,3,H,W) float32 (DEVICE_PIXELS: (H,W,3) uint8) -> (w_hat
        (Nh,h/4,w/4) int32, y symbols (M,h,w) int32). ``quantize_w`` (the codec's, on the host) turns w into w_hat; the y symbols are
        round(y - mu) exactly as ``EntropyCodec.quantize_y`` computes them."""
        raise NotImplementedError(f"{self.name} runner does not declare {FUSED_TILES}")

    def decode_tile(self, w_hat: np.ndarray, y_sym: np.ndarray, z) -> np.ndarray:
        """FUSED_TILES: (w_hat, y symbols, z) -> image (1,3,H,W) float32, not clipped
        (DEVICE_PIXELS: (H,W,3) uint8).
        z: the surrogate z (1,Z,h,w) float32, or its shape tuple for z = 0 (made on the device)."""
        raise NotImplementedError(f"{self.name} runner does not declare {FUSED_TILES}")

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
