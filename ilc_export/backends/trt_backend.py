"""The TensorRT backend: runs the engines that ``ilc-export trt`` built.

``load(folder)`` reads the engine manifest and refuses, with a message that says what to do,
engines it cannot run: another TensorRT flavour or version than the one installed, a GPU whose
compute capability the engines were not built for, no GPU at all, engine files that do not
match the manifest. Only then does it deserialise each engine (once) and create one execution
context per graph. ``run`` checks the shapes against the engine's optimisation profile (and
names the profile when it refuses), sets input shapes, binds device buffers by tensor name
(``set_input_shape`` / ``set_tensor_address``) and runs ``execute_async_v3`` on a CUDA stream.

Device memory and streams come from cuda-python (``pip install cuda-python``) when it is
installed, else from PyTorch's CUDA tensors; neither is imported until an engine is loaded,
and nothing here imports torch when cuda-python is there.

NOT RUN IN THIS PROJECT'S CI: the development machines have no GPU and the only lent GPU is a
Hopper (SM90) on which TensorRT-RTX engines do not run. The code follows the documented
TensorRT 10/11 and TensorRT-RTX Python API; its execution tests skip with the reason. The
manifest checks (version, compute capability, profile) are tested on CPU.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..contract.config import ModelConfig
from ..contract.graphs import GRAPHS
from ..contract.manifest import ENGINE_FORMAT, MANIFEST_NAME, ManifestError, peek_manifest, read_manifest
from .base import BackendError, Runner


# --------------------------------------------------------------------------- manifest checks
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


def _fmt(bhw) -> str:
    return "x".join(str(int(d)) for d in bhw)


def check_profile(graph: str, feeds: dict[str, np.ndarray], profiles: dict[str, tuple], image_profile: dict | None):
    """Refuse inputs outside the engine's optimisation profile; the message names the profile.

    profiles: input name -> (min, opt, max) tensor shapes (from the engine);
    image_profile: the manifest's image-space {"min","opt","max"} (B, H, W), for the message.
    """
    where = "engine profile"
    if image_profile:
        where = (f"engine profile (BxHxW) min {_fmt(image_profile['min'])}, opt {_fmt(image_profile['opt'])}, "
                 f"max {_fmt(image_profile['max'])}")
    for name, arr in feeds.items():
        mn, _, mx = profiles[name]
        shape = tuple(np.shape(arr))
        if len(shape) != len(mn):
            raise BackendError(f"{graph}: input {name!r} must have {len(mn)} dimensions, got shape {shape}")
        if shape[1] != mn[1]:
            raise BackendError(f"{graph}: input {name!r} has {shape[1]} channels; the engine takes {mn[1]}")
        if any(a < lo or a > hi for a, lo, hi in zip(shape, mn, mx)):
            raise BackendError(
                f"{graph}: input {name!r} of shape {_fmt(shape)} is outside the {where} "
                f"(for {name}: min {_fmt(mn)}, max {_fmt(mx)}). Rebuild the engines with `ilc-export trt "
                f"--min-shape/--max-shape`, or use another backend for this image"
            )


# --------------------------------------------------------------------------- CUDA memory
class _CudaPython:
    """Device buffers and a stream through cuda-python's runtime bindings."""

    name = "cuda-python"

    def __init__(self, device: int):
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older layout
        self.rt = cudart
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = int(self.stream)

    def _check(self, res, what):
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise BackendError(f"CUDA error in {what}: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def h2d(self, ptr: int, arr: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def d2h(self, arr: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def sync(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        self.rt.cudaStreamDestroy(self.stream)


class _TorchCuda:
    """Device buffers as torch CUDA tensors (when cuda-python is not installed)."""

    name = "torch"

    def __init__(self, device: int):
        import torch

        if not torch.cuda.is_available():
            raise BackendError("torch sees no CUDA GPU")
        self.torch = torch
        self.device = torch.device("cuda", device)
        self.stream = torch.cuda.Stream(self.device)
        self.handle = self.stream.cuda_stream
        self._keep: dict[int, object] = {}

    def alloc(self, nbytes: int) -> int:
        t = self.torch.empty(max(1, nbytes), dtype=self.torch.uint8, device=self.device)
        self._keep[t.data_ptr()] = t
        return t.data_ptr()

    def free(self, ptr: int) -> None:
        self._keep.pop(ptr, None)

    def _view(self, ptr: int, nbytes: int):
        return self._keep[ptr][:nbytes]

    def h2d(self, ptr: int, arr: np.ndarray) -> None:
        src = self.torch.from_numpy(arr.reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(self.stream):
            self._view(ptr, arr.nbytes).copy_(src, non_blocking=False)

    def d2h(self, arr: np.ndarray, ptr: int) -> None:
        dst = self.torch.from_numpy(arr.reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(self.stream):
            dst.copy_(self._view(ptr, arr.nbytes), non_blocking=False)

    def sync(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self._keep.clear()


def _cuda(device: int):
    want = os.environ.get("ILC_TRT_CUDA")  # "cuda-python" or "torch" to force one
    errors = []
    for impl in (_CudaPython, _TorchCuda):
        if want and impl.name != want:
            continue
        try:
            return impl(device)
        except ImportError as e:
            errors.append(f"{impl.name}: {e}")
    raise BackendError(
        "the tensorrt backend needs cuda-python (pip install cuda-python) or PyTorch with CUDA for device "
        "buffers; " + "; ".join(errors)
    )


# --------------------------------------------------------------------------- the runner
class _Graph:
    def __init__(self, name, engine, context, trt, np_types):
        self.name, self.engine, self.context = name, engine, context
        self.inputs, self.outputs, self.dtypes, self.profile = [], [], {}, {}
        for i in range(engine.num_io_tensors):
            t = engine.get_tensor_name(i)
            (self.inputs if engine.get_tensor_mode(t) == trt.TensorIOMode.INPUT else self.outputs).append(t)
            self.dtypes[t] = np_types[engine.get_tensor_dtype(t)]
        for t in self.inputs:
            mn, opt, mx = engine.get_tensor_profile_shape(t, 0)
            self.profile[t] = (tuple(mn), tuple(opt), tuple(mx))
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (ptr, capacity)


class TrtRunner(Runner):
    """Runs the three graphs on TensorRT engines (see the module docstring; not run here)."""

    name = "tensorrt"

    def __init__(self, source: Path, device: int = 0, verify: bool = True):
        from .tensorrt import cuda_probe
        from .tensorrt.flavour import FlavourError, detect

        folder, m = read_engine_manifest(source)
        try:
            fl = detect(m.get("flavour"))
            flavour, version = fl.name, fl.version
        except FlavourError:
            fl, flavour, version = None, None, None
        device = int(device)
        cc = cuda_probe.compute_capability(device)
        check_engine_compat(m, flavour, version, cc, cuda_probe.device_name(device))
        config = None
        if m.get("config"):
            config = ModelConfig.from_dict(m["config"])
        super().__init__(folder, m.get("model_id") or "", config)
        self.manifest = m
        self.device = device
        trt = fl.trt
        self._trt = trt
        np_types = {trt.float32: np.float32, trt.float16: np.float16, trt.int32: np.int32, trt.int64: np.int64,
                    trt.int8: np.int8, trt.bool: np.bool_}
        self._graphs: dict[str, _Graph] = {}
        blobs = {}
        for g in GRAPHS:
            info = m["engines"][g]
            path = folder / info["file"]
            if not path.is_file():
                raise BackendError(f"{path} missing (the engine folder is incomplete: rebuild it)")
            data = path.read_bytes()
            if verify and info.get("sha256") and hashlib.sha256(data).hexdigest() != info["sha256"]:
                raise BackendError(f"{path} does not match its manifest (changed or half-written): rebuild it")
            blobs[g] = (path, data)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._cuda = _cuda(device)
        try:
            for g, (path, data) in blobs.items():
                if fl.supports_engine_validity:
                    validity, diag = self._runtime.get_engine_validity(data)
                    if validity == trt.EngineValidity.INVALID:
                        raise BackendError(f"{path}: TensorRT says the engine cannot run here (diagnostics {diag})")
                engine = self._runtime.deserialize_cuda_engine(data)
                if engine is None:
                    raise BackendError(f"{path}: TensorRT could not deserialise the engine (see its log above)")
                context = engine.create_execution_context()
                if context is None:
                    raise BackendError(f"{path}: could not create an execution context (out of GPU memory?)")
                self._graphs[g] = _Graph(g, engine, context, trt, np_types)
            del blobs
        except BaseException:
            self.close()
            raise

    # -- shapes
    def profile(self, graph: str) -> dict:
        """Image-space (B, H, W) min/opt/max of the engines, from the manifest."""
        return {k: tuple(v) for k, v in self.manifest["profile"].items()}

    def _check_shapes(self, g: _Graph, feeds: dict[str, np.ndarray]) -> None:
        check_profile(g.name, feeds, g.profile, self.manifest.get("profile"))

    def _bind(self, g: _Graph, name: str, nbytes: int) -> int:
        ptr, cap = g.buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                self._cuda.free(ptr)
            ptr, cap = self._cuda.alloc(nbytes), nbytes
            g.buffers[name] = (ptr, cap)
        if not g.context.set_tensor_address(name, ptr):
            raise BackendError(f"{g.name}: TensorRT refused the address of tensor {name!r}")
        return ptr

    def run(self, graph, feeds):
        self.check_graph(graph, feeds)
        g = self._graphs[graph]
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        self._check_shapes(g, feeds)
        ctx = g.context
        host_in = {}
        for name in g.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=g.dtypes[name])
            if not ctx.set_input_shape(name, tuple(arr.shape)):
                raise BackendError(f"{graph}: TensorRT refused shape {arr.shape} for {name!r}")
            host_in[name] = arr
            self._cuda.h2d(self._bind(g, name, arr.nbytes), arr)
        outs = {}
        for name in g.outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"{graph}: output {name!r} has unresolved shape {shape}")
            outs[name] = np.empty(shape, dtype=g.dtypes[name])
            self._bind(g, name, outs[name].nbytes)
        if not ctx.execute_async_v3(self._cuda.handle):
            raise BackendError(f"{graph}: TensorRT execution failed")
        for name, arr in outs.items():
            self._cuda.d2h(arr, g.buffers[name][0])
        self._cuda.sync()  # also keeps host_in alive until the copies are done
        del host_in
        return {k: v.astype(np.float32, copy=False) for k, v in outs.items()}

    def tables_path(self) -> Path:
        t = self.manifest.get("tables")
        if not t:
            raise BackendError(f"{self.source}: the engine folder has no codec tables (rebuild from an ONNX export)")
        return self.source / t

    def close(self) -> None:
        cuda = getattr(self, "_cuda", None)
        for g in getattr(self, "_graphs", {}).values():
            for ptr, _ in g.buffers.values():
                if cuda is not None:
                    cuda.free(ptr)
            g.buffers.clear()
            g.context = None
            g.engine = None
        if cuda is not None:
            cuda.close()
        self._graphs = {}


def load(source: Path, device: int = 0, providers=None, **_) -> TrtRunner:
    """Load the engine folder built by `ilc-export trt` (or its manifest.json) on CUDA device `device`."""
    if providers:
        raise BackendError("--provider chooses ONNX Runtime execution providers; TensorRT engines take --device cuda[:N]")
    if isinstance(device, str) and device.strip().lower() == "cpu":
        raise BackendError("TensorRT engines run on a CUDA device only; use --device cuda[:N], or another backend on the CPU")
    if isinstance(device, str):  # "cuda:1", "1"
        device = int(device.split(":")[-1]) if device.split(":")[-1].isdigit() else 0
    return TrtRunner(Path(source), device=device)
