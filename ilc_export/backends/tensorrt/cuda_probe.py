"""Is there a CUDA GPU, and which compute capability? Without torch, cuda-python or a toolkit.

Uses the driver library (``libcuda.so.1``, ``nvcuda.dll``) through ctypes, so it works on a
deployment box that has only the NVIDIA driver, and answers None on a machine without one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_ATTR_CC_MAJOR = 75  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
_ATTR_CC_MINOR = 76


@functools.cache
def _libcuda():
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    found = ctypes.util.find_library("cuda")
    if found:
        names.append(found)
    for n in names:
        try:
            lib = ctypes.CDLL(n)
        except OSError:
            continue
        if lib.cuInit(0) == 0:
            return lib
        return None
    return None


def device_count() -> int:
    lib = _libcuda()
    if lib is None:
        return 0
    n = ctypes.c_int(0)
    return n.value if lib.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0


def compute_capability(device: int = 0) -> str | None:
    """'SM87' for CUDA device `device`, or None when there is no such GPU (or no driver)."""
    lib = _libcuda()
    if lib is None or device >= device_count():
        return None
    dev = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(dev), device) != 0:
        return None
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, dev) != 0:
        return None
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, dev)
    return f"SM{major.value}{minor.value}"


def device_name(device: int = 0) -> str | None:
    lib = _libcuda()
    if lib is None or device >= device_count():
        return None
    dev = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(dev), device)
    buf = ctypes.create_string_buffer(256)
    if lib.cuDeviceGetName(buf, 256, dev) != 0:
        return None
    return buf.value.decode(errors="replace")
