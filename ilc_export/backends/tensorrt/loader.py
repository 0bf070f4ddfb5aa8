"""The TensorRT loader: refuses, with a message that says what to do, engines this machine
cannot run, before TensorRT sees them: another TensorRT flavour or version than the one
installed, a GPU whose compute capability the engines were not built for, no GPU at all,
engine files that do not match the manifest. Only then does the runner deserialise them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ...contract.graphs import GRAPHS
from ...contract.manifest import ENGINE_FORMAT, MANIFEST_NAME, ManifestError, peek_manifest, read_manifest
from ..base import BackendError
from . import cuda_probe
from .flavour import FlavourError, detect
from .runner import TrtRunner


def read_engine_manifest(source: Path) -> tuple[Path, dict]:
    """(engine folder, manifest) for a folder or its manifest.json; BackendError if it is not one."""
    source = Path(source)
    folder = source.parent if source.name == MANIFEST_NAME else source
    if source.is_file() and source.suffix in (".engine", ".plan", ".trt"):
        raise BackendError(f"{source}: give the engine folder (with {MANIFEST_NAME}), not one engine file")
    if not (folder / MANIFEST_NAME).is_file():
        raise BackendError(f"no TensorRT engines in {folder}: {MANIFEST_NAME} missing (build them with `ilc-export trt`)")
    m = peek_manifest(folder)
    if m is not None and m.get("format") != ENGINE_FORMAT:
        hint = " (that is an ONNX export: use --backend onnxruntime, or build engines with `ilc-export trt`)" if (
            folder / "forward.onnx").exists() else ""
        raise BackendError(f"{folder} does not hold TensorRT engines{hint}")
    try:
        m = read_manifest(folder, ENGINE_FORMAT)
    except ManifestError as e:
        raise BackendError(str(e)) from e
    missing = [g for g in GRAPHS if g not in m.get("engines", {})]
    if missing:
        raise BackendError(f"{folder}: no engine for {', '.join(missing)} (rebuild all graphs with `ilc-export trt`)")
    return folder, m


def check_engine_compat(manifest: dict, flavour: str | None, version: str | None, device_cc: str | None,
                        device_name: str | None = None) -> None:
    """Refuse engines this machine cannot run, before TensorRT sees them. Pure: testable on CPU."""
    built = f"{manifest.get('flavour')} {manifest.get('trt_version')}"
    rebuild = "rebuild the engines on/for this machine with `ilc-export trt` (or use --backend onnxruntime)"
    if flavour is None:
        pkg = {"tensorrt_rtx": "tensorrt-rtx-cu12"}.get(manifest.get("flavour"), "tensorrt (JetPack ships it)")
        raise BackendError(f"the engines were built with {built}, which is not installed here; install {pkg}")
    if flavour != manifest.get("flavour"):
        raise BackendError(f"the engines were built with {built}; this machine has {flavour} {version}: {rebuild}")
    if str(version) != str(manifest.get("trt_version")):
        raise BackendError(
            f"the engines were built with {built}; this machine has {flavour} {version}. TensorRT engines "
            f"load only in the TensorRT version that built them: {rebuild}"
        )
    if device_cc is None:
        raise BackendError("the tensorrt backend needs a CUDA GPU and none was found; use --backend onnxruntime")
    targets = list(manifest.get("compute_capabilities") or [])
    if device_cc not in targets:
        gpu = f"{device_name} ({device_cc})" if device_name else device_cc
        if manifest.get("flavour") == "tensorrt_rtx" and device_cc in ("SM90", "SM100", "SM103"):
            how = ("TensorRT-RTX engines do not run on data-centre GPUs (Hopper, Blackwell DC): build with full "
                   "TensorRT on this machine, or use --backend onnxruntime")
        elif manifest.get("flavour") == "tensorrt_rtx":
            how = f"rebuild them with `ilc-export trt --compute-capability {device_cc}`"
        else:
            how = "rebuild them on this machine with `ilc-export trt`"
        raise BackendError(
            f"the engines were built for compute capability {', '.join(targets) or '?'}; this GPU is {gpu}: {how}"
        )


def read_engines(folder: Path, manifest: dict, verify: bool = True) -> dict[str, tuple[Path, bytes]]:
    """graph -> (engine path, bytes); BackendError for a missing or (with `verify`) changed file."""
    blobs = {}
    for g in GRAPHS:
        info = manifest["engines"][g]
        path = folder / info["file"]
        if not path.is_file():
            raise BackendError(f"{path} missing (the engine folder is incomplete: rebuild it)")
        data = path.read_bytes()
        if verify and info.get("sha256") and hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise BackendError(f"{path} does not match its manifest (changed or half-written): rebuild it")
        blobs[g] = (path, data)
    return blobs


def load(source: Path, device: int = 0, providers=None, verify: bool = True, **_) -> TrtRunner:
    """Load the engine folder built by `ilc-export trt` (or its manifest.json) on CUDA device `device`."""
    if providers:
        raise BackendError("--provider chooses ONNX Runtime execution providers; TensorRT engines take --device cuda[:N]")
    if isinstance(device, str) and device.strip().lower() == "cpu":
        raise BackendError("TensorRT engines run on a CUDA device only; use --device cuda[:N], or another backend on the CPU")
    if isinstance(device, str):  # "cuda:1", "1"
        device = int(device.split(":")[-1]) if device.split(":")[-1].isdigit() else 0
    folder, m = read_engine_manifest(source)
    try:
        fl = detect(m.get("flavour"))
        flavour, version = fl.name, fl.version
    except FlavourError:
        fl, flavour, version = None, None, None
    device = int(device)
    cc = cuda_probe.compute_capability(device)
    check_engine_compat(m, flavour, version, cc, cuda_probe.device_name(device))
    return TrtRunner(folder, m, fl, read_engines(folder, m, verify), device=device)
