"""Model configuration for training: the contract's facts, and a tiny model for tests.

Shapes, padding, the scale table and the :class:`ModelConfig` itself are defined by the
model contract (:mod:`ilc_export.contract`); the reference model reads them from there,
like the exporters and the runtime do. They are re-exported here for the training code.
"""
from __future__ import annotations

from ilc_export.contract.config import OPTIONAL_DEFAULTS, Z_MODELS, ModelConfig
from ilc_export.contract.geometry import (HYPER_DOWNSAMPLE, LEVELS, NUM_SCALES, PAD_MULTIPLE, SCALE_MAX, SCALE_MIN,
                                          latent_shape, padded_size)

__all__ = [
    "HYPER_DOWNSAMPLE", "LEVELS", "NUM_SCALES", "OPTIONAL_DEFAULTS", "PAD_MULTIPLE", "SCALE_MAX", "SCALE_MIN",
    "Z_MODELS", "ModelConfig", "latent_shape", "padded_size", "tiny_config",
]


def tiny_config(kind: str = "ilc") -> ModelConfig:
    """A model small enough for unit tests (seconds on CPU)."""
    return ModelConfig(
        name=f"{kind}-tiny",
        kind=kind,
        latent_channels=16,
        hyper_channels=8,
        blocks_per_level=[1, 1, 1, 1],
        hidden_per_level=[8, 8, 16, 16],
        inv_conv_levels=[0, 1],
        baseline_channels=16,
    )
