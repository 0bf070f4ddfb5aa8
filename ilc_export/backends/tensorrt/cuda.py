"""Device memory and a stream for the TensorRT runner: cuda-python, else PyTorch's CUDA.

Neither is imported until an engine is loaded; nothing here imports torch when cuda-python
is there. ``ILC_TRT_CUDA=cuda-python|torch`` forces one.
"""
from __future__ import annotations

import os

import numpy as np

from ..base import BackendError


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


def open_cuda(device: int):
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
