"""Estimated-rate evaluation of a float reference model (no entropy coding), and invertibility.

Used for the model card and for watching training; the real-file numbers come from
`ilc-run eval`. Both take a loaded model so a caller reads each checkpoint once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pipeline.image_io import from_nchw, load_rgb, model_input
from ..pipeline.metrics import ms_ssim, psnr


def evaluate_reference(model, images: list[Path], progress=None, correction=None) -> dict:
    """Mean estimated bpp (likelihoods of the rounded latents), PSNR and MS-SSIM.

    For an ILC also ``z_zero_ceiling_psnr``: the PSNR of f^-1(y, 0) with y unquantised, the
    best any rate can reach with z = 0 at decode (how much the invertible transform has
    learnt to push into y); None for the baseline. With an encoder add-on (`correction`),
    ``addon_ceiling_psnr``: the same decode of the corrected, still unquantised latent.
    """
    import torch

    rows = []
    for f in images:
        img, _ = load_rgb(f)
        h, w = img.shape[:2]
        with torch.inference_mode():
            out = model(torch.from_numpy(model_input(img)), quant="round")
            ceiling = addon_ceiling = None
            if out["z"] is not None:
                zero = torch.zeros_like(out["z"])
                ceiling = psnr(img, from_nchw(model.synthesis(out["y"], zero).numpy(), h, w))
                if correction is not None:
                    y1 = correction(out["y"], out["z"])
                    addon_ceiling = psnr(img, from_nchw(model.synthesis(y1, zero).numpy(), h, w))
        rec = from_nchw(out["x_hat"].numpy(), h, w)
        rows.append({"image": f.name, "bpp": out["bits"].item() / (h * w), "psnr": psnr(img, rec), "ms_ssim": ms_ssim(img, rec),
                     "z_zero_ceiling_psnr": ceiling, "addon_ceiling_psnr": addon_ceiling})
        if progress:
            progress()
    ceilings = [r["z_zero_ceiling_psnr"] for r in rows if r["z_zero_ceiling_psnr"] is not None]
    return {
        "model": model.cfg.name, "lmbda": model.cfg.lmbda,
        "bpp": float(np.mean([r["bpp"] for r in rows])),
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ms_ssim": float(np.mean([r["ms_ssim"] for r in rows])),
        "z_zero_ceiling_psnr": float(np.mean(ceilings)) if ceilings else None,
        "addon_ceiling_psnr": float(np.mean([r["addon_ceiling_psnr"] for r in rows])) if correction is not None and ceilings else None,
        "per_image": rows,
    }


def invertibility_error(model, image: Path) -> float:
    """max |f^-1(f(x)) - x| without quantisation (ILC only)."""
    import torch

    img, _ = load_rgb(image)
    x = torch.from_numpy(model_input(img))
    with torch.inference_mode():
        y, z = model.analysis(x)
        if z is None:
            raise ValueError("the baseline is not invertible")
        return float((model.f.inverse(y, z) - x).abs().max())  # f alone (synthesis adds g(y) when the model has g)
