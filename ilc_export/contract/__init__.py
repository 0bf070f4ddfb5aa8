"""The model contract: the facts every layer shares, defined once.

Geometry (padding, strides, latent shapes), the model config, the graphs and their
tensor names, manifests and the model id. The reference model, the exporters, the codec,
the backends and the pipeline all read these facts from here.

May import: the standard library and numpy. Never torch, never ``ilc_reference``, never
another ``ilc_export`` package: this is the ground floor.
"""
from .config import OPTIONAL_DEFAULTS, Z_MODELS, ModelConfig
from .geometry import HYPER_DOWNSAMPLE, LEVELS, PAD_MULTIPLE, latent_shape, padded_size
from .graphs import FP32_GRAPHS, GRAPH_NAMES, GRAPHS
from .manifest import (ENGINE_FORMAT, MANIFEST_NAME, ONNX_FORMAT, TABLES_NAME, ManifestError, read_manifest,
                       write_manifest)
from .model_id import TABLE_PREFIX, compute_model_id, model_id_of_file

__all__ = [
    "ENGINE_FORMAT", "FP32_GRAPHS", "GRAPHS", "GRAPH_NAMES", "HYPER_DOWNSAMPLE", "LEVELS", "MANIFEST_NAME",
    "ONNX_FORMAT", "OPTIONAL_DEFAULTS", "PAD_MULTIPLE", "TABLES_NAME", "TABLE_PREFIX", "Z_MODELS", "ManifestError",
    "ModelConfig", "compute_model_id", "latent_shape", "model_id_of_file", "padded_size", "read_manifest",
    "write_manifest",
]
