"""The ONNX Runtime runner: one InferenceSession per graph of an export folder.

FUSED_TILES through IO binding: the graphs' outputs are bound on the first provider's device,
so z never leaves it at encode time, and each graph's inputs are copied in once. The symbol
rounding (y - mu) and y_hat = symbols + mu are not graphs, so y and mu are read back to the
host: only the graphs, not the arithmetic between them, run on an ONNX Runtime device.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...codec.entropy import EntropyCodec
from ...contract.config import ModelConfig
from ...contract.graphs import GRAPHS
from ...contract.manifest import TABLES_NAME
from ..base import BackendError, Runner
from . import SPEC

#: providers whose tensors live in CUDA memory (IO binding binds there)
CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class OrtRunner(Runner):
    name = SPEC.name
    capabilities = SPEC.capabilities

    def __init__(self, source: Path, manifest: dict, files: dict[str, str], precision: str, providers: list,
                 threads: int | None = None):
        """One InferenceSession per graph file (`files`: graph -> file name in `source`),
        on `providers` (onnxruntime's list, preference order); see :func:`.loader.load`."""
        import onnxruntime as ort

        super().__init__(source, manifest["model_id"], ModelConfig.from_dict(manifest["config"]))
        self.manifest = manifest
        self.precision = precision
        self.files = files
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ORT's thread pool spin-waits after each run; between graph runs the codec does
        # numpy work (integer scale network, entropy coding) that the spinning threads starve:
        # measured 0.584 s -> 0.351 s end to end per Kodak image with spinning off.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.sessions = {}
        for g, fname in files.items():
            path = self.source / fname
            try:
                self.sessions[g] = ort.InferenceSession(str(path), sess_options=so, providers=providers)
            except Exception as e:
                raise BackendError(f"{path}: onnxruntime cannot load this graph: {e}") from e
            got_in = [i.name for i in self.sessions[g].get_inputs()]
            got_out = [o.name for o in self.sessions[g].get_outputs()]
            want_in, want_out = GRAPHS[g]
            if sorted(got_in) != sorted(want_in) or list(got_out) != list(want_out):
                raise BackendError(f"{path}: graph has inputs {got_in} / outputs {got_out}, expected {list(want_in)} / {list(want_out)}")
        self.providers = self.sessions["forward"].get_providers()
        first = providers[0] if providers else "CPUExecutionProvider"
        first_name, first_opts = (first, {}) if isinstance(first, str) else (first[0], dict(first[1]))
        if first_name in CUDA_PROVIDERS and self.providers[0] in CUDA_PROVIDERS:
            self._bind = ("cuda", int(first_opts.get("device_id", 0)))
            self.device = f"{self.providers[0]}:{self._bind[1]}"
        else:
            self._bind = ("cpu", 0)
            self.device = self.providers[0]
        self._ort = ort

    def run(self, graph, feeds):
        self.check_graph(graph, feeds)
        sess = self.sessions[graph]
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        for k, v in arrays.items():
            if v.ndim != 4:
                raise BackendError(f"{graph}: input {k!r} must be 4-D (B,C,H,W), got shape {v.shape}")
        try:
            outs = sess.run(list(GRAPHS[graph][1]), arrays)
        except Exception as e:
            raise BackendError(f"{graph}: onnxruntime failed: {e}") from e
        return dict(zip(GRAPHS[graph][1], outs))

    # -- FUSED_TILES through IO binding ----------------------------------------------
    def _bound(self, graph: str, feeds: dict) -> list:
        """Run `graph` with outputs bound on the provider's device; feeds are numpy arrays
        (copied in once) or OrtValues (already there). Returns the output OrtValues."""
        sess = self.sessions[graph]
        io = sess.io_binding()
        for k, v in feeds.items():
            if isinstance(v, np.ndarray):
                v = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v, dtype=np.float32), *self._bind)
            io.bind_ortvalue_input(k, v)
        for k in GRAPHS[graph][1]:
            io.bind_output(k, *self._bind)
        try:
            sess.run_with_iobinding(io)
        except Exception as e:
            raise BackendError(f"{graph}: onnxruntime failed: {e}") from e
        return io.get_outputs()

    def encode_tile(self, image, quantize_w, valid=None):
        y, _z, w = self._bound("forward", {"image": image})  # z stays on the device
        w_hat = quantize_w(w.numpy()[0])
        (mu,) = self._bound("hyper_mean", {"w_hat": w_hat[None]})
        return w_hat, EntropyCodec.quantize_y(y.numpy()[0], mu.numpy()[0])

    def decode_tile(self, w_hat, y_sym, z):
        (mu,) = self._bound("hyper_mean", {"w_hat": w_hat[None]})
        y_hat = (y_sym[None].astype(np.float32) + mu.numpy()).astype(np.float32)
        if isinstance(z, tuple):
            z = np.zeros(z, np.float32)  # onnxruntime has no zero-filled device allocation
        (x,) = self._bound("inverse", {"y_hat": y_hat, "z": z})
        return x.numpy()

    def tables_path(self) -> Path:
        return self.source / TABLES_NAME

    def close(self) -> None:
        self.sessions = {}
