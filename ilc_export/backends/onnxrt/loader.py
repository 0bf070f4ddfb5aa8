"""The ONNX Runtime loader: checks an export folder and the options, then opens the runner.

``load(folder)`` reads ``manifest.json``, checks every graph file's size and sha256
against it (a corrupted or mismatched file is named in the error), and creates one
InferenceSession per graph, once. Execution providers: TensorRT and CUDA when this
onnxruntime build has them, else CPU; or the ``providers`` given, in preference order, by
full name or short name (cpu, cuda, cuda:N, tensorrt / trt, tensorrt:N). Never imports torch.
"""
from __future__ import annotations

from pathlib import Path

from ...contract.graphs import GRAPHS
from ...contract.manifest import (MANIFEST_NAME, PRECISIONS, TABLES_NAME, ManifestError, graph_file, read_manifest,
                                  verify_files)
from ..base import BackendError
from .runner import CUDA_PROVIDERS, OrtRunner

#: preferred providers, best first; only those this onnxruntime build has are used
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
#: short provider names accepted by ``providers`` / ``--provider``
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def parse_providers(providers) -> list:
    """'cuda,cpu' / ['tensorrt', 'cuda:1'] / full names / (name, options) -> onnxruntime's
    providers list, preference order kept; BackendError naming an unknown one."""
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p.strip()]
    out = []
    for p in providers:
        if not isinstance(p, str):  # (name, options) as onnxruntime takes it
            out.append(tuple(p))
            continue
        name, _, index = p.strip().partition(":")
        full = PROVIDER_NAMES.get(name.lower(), name)
        if not full.endswith("ExecutionProvider"):
            raise BackendError(f"unknown execution provider {p.strip()!r}; use cpu, cuda[:N], tensorrt[:N] "
                               "or a full onnxruntime provider name")
        if index:
            if not index.isdigit() or full not in CUDA_PROVIDERS:
                raise BackendError(f"bad execution provider {p.strip()!r}: only cuda:N and tensorrt:N take a device index")
            out.append((full, {"device_id": int(index)}))
        else:
            out.append(full)
    if not out:
        raise BackendError("no execution provider given; use cpu, cuda[:N] or tensorrt[:N]")
    return out


def load(
    source: Path,
    threads: int | None = None,
    providers=None,
    precision: str = "fp32",
    verify: bool = True,
    device: str | None = None,
    **_,
) -> OrtRunner:
    """Open export folder `source` (or its manifest.json) with onnxruntime."""
    source = Path(source)
    if device not in (None, "cpu"):
        raise BackendError(f"--device {device} is for the torch backend; onnxruntime picks its device with "
                           "--provider (cuda[:N], tensorrt[:N], cpu)")
    if source.is_file():
        if source.name == MANIFEST_NAME:
            source = source.parent
        else:
            raise BackendError(
                f"the onnxruntime backend needs an ONNX export folder (with manifest.json), got file {source}; "
                "export one with `ilc-export onnx --ckpt ...`"
            )
    if not source.exists():
        raise BackendError(f"ONNX export folder not found: {source}")
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
        raise BackendError(f"onnxruntime is not installed: {e}") from e
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    try:
        manifest = read_manifest(source)
        files = {g: graph_file(manifest, g, precision) for g in GRAPHS}
        if verify:
            verify_files(source, manifest, sorted(set(files.values()) | {TABLES_NAME}))
    except ManifestError as e:
        raise BackendError(str(e)) from e
    available = ort.get_available_providers()
    if providers is None:
        providers = [p for p in DEFAULT_PROVIDERS if p in available]
    else:
        providers = parse_providers(providers)
        missing = [p if isinstance(p, str) else p[0] for p in providers]
        missing = [p for p in missing if p not in available]
        if missing:
            raise BackendError(f"onnxruntime {ort.__version__} here lacks {', '.join(missing)} (available: "
                               f"{', '.join(available)}); install an onnxruntime build with it, or use --provider cpu")
    return OrtRunner(source, manifest, files, precision, providers, threads=threads)
