"""The PyTorch backend: runs a checkpoint's reference model directly, on CPU or a CUDA GPU.

``loader.load`` checks the device and loads the model, ``runner.TorchRunner`` runs it.
Importing this package imports neither (nor torch): the registry reads :data:`SPEC` only.
"""
from ..base import CHECKPOINT, DEVICE_PIXELS, ENCODER_ADDON, FUSED_TILES, REFINE, BackendSpec

SPEC = BackendSpec(
    "torch", "ilc_export.backends.pytorch.loader:load", CHECKPOINT, "a checkpoint (.safetensors)",
    aliases=("pytorch",), capabilities=frozenset({FUSED_TILES, DEVICE_PIXELS, REFINE, ENCODER_ADDON}), precisions=("fp32", "fp16"),
    requires=("torch",), requires_name="PyTorch", install="pip install 'torch==2.13.0' (CPU build)",
    gpu_by_default=False,  # --device cpu unless told otherwise
)
