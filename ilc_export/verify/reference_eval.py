"""Estimated-rate evaluation of a float reference model (no entropy coding), and invertibility.

Used for the model card and for watching training; the real-file numbers come from
`ilc-run eval`. Both take a loaded model so a caller reads each checkpoint once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pipeline.image_io import from_nchw, load_rgb, pad_to_multiple, to_nchw
from ..pipeline.metrics import ms_ssim, psnr


def _padded(image: Path):
    import torch

    from ilc_reference.config import PAD_MULTIPLE

    img, _ = load_rgb(image)
    return img, torch.from_numpy(to_nchw(pad_to_multiple(img, PAD_MULTIPLE)))


def evaluate_reference(model, images: list[Path], progress=None) -> dict:
    """Mean estimated bpp (likelihoods of the rounded latents), PSNR and MS-SSIM."""
    import torch

    rows = []
    for f in images:
        img, x = _padded(f)
        h, w = img.shape[:2]
        with torch.inference_mode():
            out = model(x, quant="round")
        rec = from_nchw(out["x_hat"].numpy(), h, w)
        rows.append({"image": f.name, "bpp": out["bits"].item() / (h * w), "psnr": psnr(img, rec), "ms_ssim": ms_ssim(img, rec)})
        if progress:
            progress()
    return {
        "model": model.cfg.name, "lmbda": model.cfg.lmbda,
        "bpp": float(np.mean([r["bpp"] for r in rows])),
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ms_ssim": float(np.mean([r["ms_ssim"] for r in rows])),
        "per_image": rows,
    }


def invertibility_error(model, image: Path) -> float:
    """max |f^-1(f(x)) - x| without quantisation (ILC only)."""
    import torch

    _, x = _padded(image)
    with torch.inference_mode():
        y, z = model.analysis(x)
        if z is None:
            raise ValueError("the baseline is not invertible")
        return float((model.synthesis(y, z) - x).abs().max())


def z_zero_ceiling(model, images: list[Path]) -> float:
    """Mean PSNR of f^-1(y, 0) with y unquantised (ILC only): the best any rate can reach
    with z = 0 at decode, i.e. how much the invertible transform has learnt to push into y."""
    import torch

    vals = []
    for f in images:
        img, x = _padded(f)
        h, w = img.shape[:2]
        with torch.inference_mode():
            y, z = model.analysis(x)
            if z is None:
                raise ValueError("the baseline has no z")
            rec = from_nchw(model.synthesis(y, torch.zeros_like(z)).numpy(), h, w)
        vals.append(psnr(img, rec))
    return float(np.mean(vals))
