"""The TensorRT backend: runs the engine folders that ``ilc-export trt`` builds.

``loader.load`` refuses engines this machine cannot run, ``runner.TrtRunner`` runs them;
``flavour`` (which TensorRT is installed) and ``cuda_probe`` (which GPU is there) are runtime
facts that the engine builder reads too. Importing this package imports none of them (nor
TensorRT): the registry reads :data:`SPEC` only.
"""
from ..base import ENGINES, MAX_SHAPE, BackendSpec

SPEC = BackendSpec(
    name="tensorrt",
    loader="ilc_export.backends.tensorrt.loader:load",
    source=ENGINES,
    source_noun="a TensorRT engine folder",
    make="ilc-export trt",
    aliases=("trt",),
    capabilities=frozenset({MAX_SHAPE}),
    precisions=("fp32", "fp16"),
    gpu_by_default=True,
)
