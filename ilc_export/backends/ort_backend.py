"""The ONNX Runtime backend: runs an export folder's graphs. Never imports torch.

``load(folder)`` reads ``manifest.json``, checks every graph file's size and sha256
against it (a corrupted or mismatched file is named in the error), and creates one
InferenceSession per graph, once. Execution providers: TensorRT and CUDA when this
onnxruntime build has them, else CPU; or the ``providers`` given.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export.manifest import (
    PRECISIONS,
    TABLES_NAME,
    ManifestError,
    graph_file,
    read_manifest,
    verify_files,
)
from .base import GRAPHS, BackendError, Runner

#: preferred providers, best first; only those this onnxruntime build has are used
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _config_from(manifest: dict):
    from ilc_reference.config import ModelConfig  # torch-free module

    return ModelConfig.from_dict(manifest["config"])


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(
        self,
        source: Path,
        threads: int | None = None,
        providers: list | tuple | None = None,
        precision: str = "fp32",
        verify: bool = True,
    ):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendError(f"onnxruntime is not installed: {e}") from e
        source = Path(source)
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        try:
            manifest = read_manifest(source)
            files = {g: graph_file(manifest, g, precision) for g in GRAPHS}
            if verify:
                verify_files(source, manifest, sorted(set(files.values()) | {TABLES_NAME}))
        except ManifestError as e:
            raise BackendError(str(e)) from e
        super().__init__(source, manifest["model_id"], _config_from(manifest))
        self.manifest = manifest
        self.precision = precision
        self.files = files
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in DEFAULT_PROVIDERS if p in available]
        else:
            providers = list(providers)
            missing = [p if isinstance(p, str) else p[0] for p in providers]
            missing = [p for p in missing if p not in available]
            if missing:
                raise BackendError(f"onnxruntime here lacks {', '.join(missing)}; available: {', '.join(available)}")
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
            path = source / fname
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

    def tables_path(self) -> Path:
        return self.source / TABLES_NAME

    def close(self) -> None:
        self.sessions = {}


def load(
    source: Path,
    threads: int | None = None,
    providers=None,
    precision: str = "fp32",
    verify: bool = True,
    **_,
) -> OrtRunner:
    source = Path(source)
    if source.is_file():
        if source.name == "manifest.json":
            source = source.parent
        else:
            raise BackendError(
                f"the onnxruntime backend needs an ONNX export folder (with manifest.json), got file {source}; "
                "export one with `ilc-export onnx --ckpt ...`"
            )
    if not source.exists():
        raise BackendError(f"ONNX export folder not found: {source}")
    return OrtRunner(source, threads=threads, providers=providers, precision=precision, verify=verify)
