"""The TensorRT runner: runs the engines that ``ilc-export trt`` built.

``run`` checks the shapes against the engine's optimisation profile (and names the profile
when it refuses), sets input shapes, binds device buffers by tensor name
(``set_input_shape`` / ``set_tensor_address``) and runs ``execute_async_v3`` on a CUDA stream.

NOT RUN IN THIS PROJECT'S CI: the development machines have no GPU and the only lent GPU is a
Hopper (SM90) on which TensorRT-RTX engines do not run. The code follows the documented
TensorRT 10/11 and TensorRT-RTX Python API; its execution tests skip with the reason. The
manifest and profile checks are tested on CPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...contract.config import ModelConfig
from ..base import BackendError, Runner
from . import SPEC
from .cuda import open_cuda


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

    name = SPEC.name
    capabilities = SPEC.capabilities

    def __init__(self, folder: Path, manifest: dict, flavour, blobs: dict[str, tuple[Path, bytes]], device: int = 0):
        """Deserialise each graph's engine (`blobs`: graph -> (path, bytes), checked by
        :func:`.loader.load`) with the installed TensorRT `flavour` on CUDA device `device`."""
        m = manifest
        config = ModelConfig.from_dict(m["config"]) if m.get("config") else None
        super().__init__(folder, m.get("model_id") or "", config)
        self.manifest = m
        self.device = device
        fl = flavour
        trt = fl.trt
        self._trt = trt
        np_types = {trt.float32: np.float32, trt.float16: np.float16, trt.int32: np.int32, trt.int64: np.int64,
                    trt.int8: np.int8, trt.bool: np.bool_}
        self._graphs: dict[str, _Graph] = {}
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._cuda = open_cuda(device)
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

    def max_image_size(self) -> tuple[int, int]:
        """MAX_SHAPE: the (height, width) of the optimisation profile's max."""
        mx = self.profile("forward")["max"]
        return int(mx[-2]), int(mx[-1])

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
