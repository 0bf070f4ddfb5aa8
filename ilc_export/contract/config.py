"""The model configuration: size and kind of a model, as stored with its weights.

Torch-free. ``to_json`` is part of the contract: the model id hashes it, so a config
serialises byte for byte as it always has (see OPTIONAL_DEFAULTS).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .geometry import TOTAL_CHANNELS


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
    # --- optional decoder-side network g; fields added after the model id was defined: at
    # their defaults they are left out of to_json(), so existing configs, their checkpoints'
    # metadata and their model ids stay byte-identical (see OPTIONAL_DEFAULTS).
    z_model: str = "zero"  # "zero": decode with z_hat = 0 (+ surrogate); "g": z_hat = g(y_hat) (+ surrogate)
    g_hidden: int = 64  # width of g's two hidden 3x3 convs (at H/16)
    g_lr_scale: float = 1.0  # g's weights are stored divided by this (equalised-lr style): Adam moves g this much faster
    g_refine_y: bool = False  # g also predicts a correction of y_hat's quantisation error: f^-1(y_hat + r(y_hat), z_hat)
    post_hidden: int = 0  # width of the image-domain post-filter after the synthesis (f^-1 or g_s; 0: none)

    @property
    def total_channels(self) -> int:
        return TOTAL_CHANNELS

    @property
    def z_channels(self) -> int:
        return self.total_channels - self.latent_channels

    @property
    def has_g(self) -> bool:
        return self.kind == "ilc" and self.z_model == "g"

    @property
    def has_post(self) -> bool:
        return self.post_hidden > 0

    def to_dict(self) -> dict:
        """Fields as a dict; optional fields at their default value are left out."""
        d = dataclasses.asdict(self)
        for k, v in OPTIONAL_DEFAULTS.items():
            if d.get(k) == v:
                del d[k]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        cfg = cls(**d)
        if cfg.z_model not in Z_MODELS:
            raise ValueError(f"unknown z_model {cfg.z_model!r} (expected one of {list(Z_MODELS)})")
        return cfg


#: Fields added after the model id (a hash of the config JSON) was defined, with the value
#: that reproduces the old behaviour. to_json() omits them at that value, so an old config
#: serialises (and hashes) exactly as before.
OPTIONAL_DEFAULTS = {"z_model": "zero", "g_hidden": 64, "g_lr_scale": 1.0, "g_refine_y": False, "post_hidden": 0}
Z_MODELS = ("zero", "g")
