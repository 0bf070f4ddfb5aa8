"""The latent correction an ILC encoder may add: y' = y + h(y, z), in one network pass.

The ILC decodes f^-1(y_hat, 0) (or g's estimate); its encoder knows the z the decoder drops,
so it can move y to where the decoder's reconstruction is better for the rate it pays. h is
trained for the model's own objective through the unchanged decoder (every other weight
frozen; ``scripts/amortised_refine.py``) and shipped as an encoder add-on
(``ilc_export.contract.encoder_addon``): the hyperprior still sees the unrefined y, only the
coded latent changes, so decoder, bitstream, tables and model id stay as they are.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ilc_export.contract.encoder_addon import LATENT_CORRECTION, addon_path, read_addon_meta
from ilc_export.contract.files import write_atomic


class LatentCorrection(nn.Module):
    """dy = h(y, z) at the latent resolution: three convs (the first k_in x k_in, the others
    3x3); zero last conv = no change. k_in = 1 makes the widest layer 9x smaller."""

    def __init__(self, y_ch: int, z_ch: int, hidden: int = 128, k_in: int = 3):
        super().__init__()
        self.arch = {"y_ch": y_ch, "z_ch": z_ch, "hidden": hidden, **({"k_in": k_in} if k_in != 3 else {})}
        self.net = nn.Sequential(nn.Conv2d(y_ch + z_ch, hidden, k_in, padding=k_in // 2), nn.LeakyReLU(0.2),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(hidden, y_ch, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, y, z):
        return y + self.net(torch.cat([y, z], 1))


#: conv weights are stored as int8 with one fp32 scale per output channel (a quarter of
#: the bytes: the add-on travels with every checkpoint); biases stay fp32. Only the encoder
#: reads it, so its rounding moves what is sent, never what a file decodes to.
QUANT_SUFFIX, SCALE_SUFFIX = ".q8", ".scale"


def _pack(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        v = v.detach().float().cpu().contiguous()
        if v.ndim == 4:
            scale = v.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127.0
            out[k + QUANT_SUFFIX] = torch.round(v / scale[:, None, None, None]).to(torch.int8)
            out[k + SCALE_SUFFIX] = scale
        else:
            out[k] = v
    return out


def _unpack(tensors: dict) -> dict:
    out = {}
    for k, v in tensors.items():
        if k.endswith(QUANT_SUFFIX):
            base = k[: -len(QUANT_SUFFIX)]
            out[base] = v.float() * tensors[base + SCALE_SUFFIX].float()[:, None, None, None]
        elif not k.endswith(SCALE_SUFFIX):
            out[k] = v.float()
    return out


def save_addon(h: LatentCorrection, path: str | Path, model_id: str, info: dict | None = None) -> Path:
    """Write `h` as the encoder add-on of the model with id `model_id` (atomically)."""
    from safetensors.torch import save

    meta = {"kind": LATENT_CORRECTION, "serves": model_id, "arch": json.dumps(h.arch, sort_keys=True),
            "info": json.dumps(info or {}, sort_keys=True)}
    return write_atomic(Path(path), save(_pack(h.state_dict()), metadata=meta))


def load_addon(path: str | Path, model_id: str | None, map_location="cpu") -> LatentCorrection:
    """The add-on at `path`, checked to serve `model_id` (AddonError otherwise; None: any model,
    e.g. to start training h for a new version of the model from it)."""
    from safetensors.torch import load_file

    meta = read_addon_meta(path, model_id)
    h = LatentCorrection(**meta["arch"])
    h.load_state_dict(_unpack(load_file(str(path))))
    return h.to(map_location).eval()


def relabel_addon(src: str | Path, dst: str | Path, model_id: str, info: dict | None = None) -> Path:
    """The add-on at `src` written to `dst` as serving `model_id`, weights unchanged: for the same
    decoder under a new id (building codec tables changes the id). Its info keeps where it came
    from, plus `info`."""
    meta = read_addon_meta(src)
    return save_addon(load_addon(src, None), dst, model_id,
                      {**meta["info"], "relabelled_from": meta["serves"], **(info or {})})


def addon_for(ckpt: str | Path, model_id: str, map_location="cpu") -> LatentCorrection | None:
    """The add-on sitting next to checkpoint `ckpt`, or None when there is none."""
    p = addon_path(ckpt)
    return load_addon(p, model_id, map_location) if p.is_file() else None
