"""Geometry of the model contract: padding, strides and the shape of every latent.

The reference model, the exporters, the codec and the pipeline all read these numbers
from here; none of them keeps its own copy.
"""
from __future__ import annotations

#: Haar levels of the invertible transform; latents sit at H/2**LEVELS.
LEVELS = 4
#: Spatial stride of the latents y and z relative to the (padded) image.
LATENT_STRIDE = 2**LEVELS  # 16
#: The hyperprior downsamples the latent twice more.
HYPER_DOWNSAMPLE = 4
#: Spatial stride of the hyper-latent w relative to the (padded) image.
HYPER_STRIDE = LATENT_STRIDE * HYPER_DOWNSAMPLE  # 64
#: Inputs are padded (edge-replicated) to a multiple of this.
PAD_MULTIPLE = 2**LEVELS * HYPER_DOWNSAMPLE  # 64
#: Channels after LEVELS Haar levels of an RGB image: y and z together.
TOTAL_CHANNELS = 3 * 4**LEVELS  # 768
#: Log-spaced Gaussian scale table shared by the float model and the codec's tables.
SCALE_MIN = 0.11
SCALE_MAX = 64.0
NUM_SCALES = 64


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The size the model runs at: height and width rounded up to PAD_MULTIPLE."""
    m = PAD_MULTIPLE
    return (-(-height // m) * m, -(-width // m) * m)


def latent_shape(cfg, height: int, width: int) -> dict[str, tuple[int, int, int]]:
    """Per-image (C, H, W) of every tensor crossing the graph/codec boundary, for a padded size.

    `cfg` is a :class:`~ilc_export.contract.config.ModelConfig` (or anything with its
    ``latent_channels``, ``z_channels`` and ``hyper_channels``)."""
    if height % PAD_MULTIPLE or width % PAD_MULTIPLE:
        raise ValueError(f"size {height}x{width} is not padded to a multiple of {PAD_MULTIPLE}")
    h, w = height // LATENT_STRIDE, width // LATENT_STRIDE
    return {
        "y": (cfg.latent_channels, h, w),
        "z": (cfg.z_channels, h, w),
        "w": (cfg.hyper_channels, h // HYPER_DOWNSAMPLE, w // HYPER_DOWNSAMPLE),
    }
