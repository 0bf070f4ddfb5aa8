"""The ONNX Runtime backend: runs an ONNX export folder's graphs (``ilc-export onnx``).

``loader.load`` checks the folder and options, ``runner.OrtRunner`` runs the graphs. Importing
this package imports neither (nor onnxruntime): the registry reads :data:`SPEC` only.
"""
from ..base import FUSED_TILES, ONNX_EXPORT, BackendSpec

SPEC = BackendSpec(
    "onnxruntime", "ilc_export.backends.onnxrt.loader:load", ONNX_EXPORT, "an ONNX export folder",
    make="ilc-export onnx", aliases=("ort",), capabilities=frozenset({FUSED_TILES}), precisions=("fp32", "fp16"),
    requires=("onnxruntime",), requires_name="onnxruntime", install="pip install onnxruntime",
    gpu_by_default=True,  # the CUDA / TensorRT execution providers, where this onnxruntime has them
)
