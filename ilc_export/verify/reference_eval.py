"""Estimated-rate evaluation of a float checkpoint (no entropy coding), and invertibility.

Used for the model card and for watching training; the real-file numbers come from
`ilc-run eval`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pipeline.image_io import from_nchw, load_rgb, pad_to_multiple, to_nchw
from ..pipeline.metrics import ms_ssim, psnr


def evaluate_reference(ckpt: Path, images: list[Path], progress=None) -> dict:
    import torch

    from ilc_reference.checkpoint import load_model
    from ilc_reference.config import PAD_MULTIPLE

    model = load_model(ckpt)
    rows = []
    for f in images:
        img, _ = load_rgb(f)
        h, w = img.shape[:2]
        x = torch.from_numpy(to_nchw(pad_to_multiple(img, PAD_MULTIPLE)))
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


def invertibility_error(ckpt: Path, image: Path) -> float:
    """max |f^-1(f(x)) - x| without quantisation (ILC only)."""
    import torch

    from ilc_reference.checkpoint import load_model
    from ilc_reference.config import PAD_MULTIPLE

    model = load_model(ckpt)
    img, _ = load_rgb(image)
    x = torch.from_numpy(to_nchw(pad_to_multiple(img, PAD_MULTIPLE)))
    with torch.inference_mode():
        y, z = model.analysis(x)
        if z is None:
            raise ValueError("the baseline is not invertible")
        return float((model.synthesis(y, z) - x).abs().max())
