"""The PyTorch reference backend: runs the checkpoint's modules directly."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendError, Runner


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, ckpt: Path, device: str = "cpu", threads: int | None = None):
        import torch

        from ilc_reference.checkpoint import load_model

        from ..codec.tables import model_id_of_file

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.device = torch.device(device)
        try:
            model = load_model(ckpt).to(self.device)
        except FileNotFoundError as e:
            raise BackendError(str(e)) from e
        super().__init__(ckpt, model_id_of_file(ckpt), model.cfg)
        self.model = model
        self._fns = {
            "forward": self._forward,
            "hyper_mean": lambda w_hat: {"mu": model.hyper_mean(w_hat)},
            "inverse": lambda y_hat, z: {"image": model.synthesis(y_hat, z)},
        }

    def _forward(self, image):
        y, z = self.model.analysis(image)
        if z is None:  # the baseline has no z
            z = self.model.zeros_z(y)
        return {"y": y, "z": z, "w": self.model.h_a(y)}

    def run(self, graph, feeds):
        self.check_graph(graph, feeds)
        torch = self._torch
        with torch.inference_mode():
            t = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(self.device) for k, v in feeds.items()}
            out = self._fns[graph](**t)
            return {k: v.float().cpu().numpy() for k, v in out.items()}

    def tables_path(self) -> Path:
        return self.source


def load(source: Path, device: str = "cpu", threads: int | None = None, **_) -> TorchRunner:
    source = Path(source)
    if source.is_dir():
        raise BackendError(f"the torch backend needs a checkpoint file (.safetensors), got folder {source}")
    return TorchRunner(source, device=device, threads=threads)
