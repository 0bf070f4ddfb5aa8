"""Model configuration: the one place for shapes, padding and channel counts.

Export, the pipeline and the codec read these facts from here (or from the
manifest written from here), never from their own constants.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

#: Haar levels of the invertible transform; latents sit at H/2**LEVELS.
LEVELS = 4
#: The hyperprior downsamples the latent twice more.
HYPER_DOWNSAMPLE = 4
#: Inputs are padded (edge-replicated) to a multiple of this.
PAD_MULTIPLE = 2**LEVELS * HYPER_DOWNSAMPLE  # 64
#: Log-spaced Gaussian scale table shared by the float model and the codec.
SCALE_MIN = 0.11
SCALE_MAX = 64.0
NUM_SCALES = 64


@dataclass
class ModelConfig:
    """Size of an ILC (or baseline) model. Model size is config, not code."""

    name: str = "ilc-default"
    kind: str = "ilc"  # "ilc" (invertible) or "baseline" (conv analysis/synthesis)
    latent_channels: int = 96  # M: channels of y
    hyper_channels: int = 48  # channels of the hyper-latent w
    blocks_per_level: list[int] = field(default_factory=lambda: [1, 1, 2, 2])
    hidden_per_level: list[int] = field(default_factory=lambda: [24, 48, 96, 64])
    inv_conv_levels: list[int] = field(default_factory=lambda: [0, 1, 2])  # levels with a learned 1x1 mix
    clamp: float = 1.0  # c in s = c * (2*sigmoid(H) - 1)
    baseline_channels: int = 64  # N of the conv baseline
    lmbda: float = 0.0067
    beta: float = 1.0

    @property
    def total_channels(self) -> int:
        return 3 * 4**LEVELS

    @property
    def z_channels(self) -> int:
        return self.total_channels - self.latent_channels

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


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


def latent_shape(cfg: ModelConfig, height: int, width: int) -> dict[str, tuple[int, int, int]]:
    """Per-image (C, H, W) of every tensor crossing the graph/codec boundary, for a padded size."""
    if height % PAD_MULTIPLE or width % PAD_MULTIPLE:
        raise ValueError(f"size {height}x{width} is not padded to a multiple of {PAD_MULTIPLE}")
    s = 2**LEVELS
    h, w = height // s, width // s
    return {
        "y": (cfg.latent_channels, h, w),
        "z": (cfg.z_channels, h, w),
        "w": (cfg.hyper_channels, h // HYPER_DOWNSAMPLE, w // HYPER_DOWNSAMPLE),
    }


def padded_size(height: int, width: int) -> tuple[int, int]:
    m = PAD_MULTIPLE
    return (-(-height // m) * m, -(-width // m) * m)
