"""The TensorRT backend: runs the engine folders that ``ilc-export trt`` builds.

``loader.load`` refuses engines this machine cannot run, ``runner.TrtRunner`` runs them;
``flavour`` (which TensorRT is installed) and ``cuda_probe`` (which GPU is there) are runtime
facts that the engine builder reads too. Importing this package imports none of them (nor
TensorRT): the registry reads :data:`SPEC` only.
"""
from ..base import ENGINES, MAX_SHAPE, BackendSpec

# No `requires`: either TensorRT flavour will do (tensorrt or tensorrt_rtx); the loader says
# which is missing.
SPEC = BackendSpec(
    "tensorrt", "ilc_export.backends.tensorrt.loader:load", ENGINES, "a TensorRT engine folder",
    make="ilc-export trt", aliases=("trt",), capabilities=frozenset({MAX_SHAPE}), precisions=("fp32", "fp16"),
    gpu_by_default=True,  # engines run on a CUDA GPU only
)
