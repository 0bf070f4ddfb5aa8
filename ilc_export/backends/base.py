"""One interface for every backend (torch, ONNX Runtime, TensorRT), Polygraphy-style.

A backend is a *loader* (``load(source, **options) -> Runner``) plus a *runner* that
executes the model's named graphs on numpy arrays. Runners know nothing about files
of images or bitstreams; the pipeline knows nothing about which runner it drives.

Graphs (names, inputs, outputs; all float32, NCHW; h = H/16, w = W/16):
  forward:    image (B,3,H,W) in [0,1]  -> y (B,M,h,w), z (B,Z,h,w), w (B,Nh,h/4,w/4)
  hyper_mean: w_hat (B,Nh,h/4,w/4)      -> mu (B,M,h,w)
  inverse:    y_hat (B,M,h,w), z (B,Z,h,w) -> image (B,3,H,W) (not clipped)
H and W must be multiples of ilc_reference.config.PAD_MULTIPLE.
The scale branch is not a graph: the codec core runs it as an exact integer network.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

GRAPHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "forward": (("image",), ("y", "z", "w")),
    "hyper_mean": (("w_hat",), ("mu",)),
    "inverse": (("y_hat", "z"), ("image",)),
}


class BackendError(RuntimeError):
    """A backend cannot load or run a model (missing runtime, wrong files, bad shapes)."""


class Runner(ABC):
    """Executes the model's graphs. Created once per model and reused across images."""

    #: backend name, e.g. "torch"
    name: str = ""

    def __init__(self, source: Path, model_id: str, config):
        self.source = Path(source)
        self.model_id = model_id  # hex string, identifies weights + codec tables
        self.config = config  # ilc_reference.config.ModelConfig

    @abstractmethod
    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph; feeds and results are float32 numpy arrays keyed by tensor name."""

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
