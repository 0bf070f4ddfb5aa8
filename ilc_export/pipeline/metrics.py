"""PSNR and MS-SSIM on 8-bit RGB, numpy only."""
from __future__ import annotations

import numpy as np

_MS_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _gauss(size=11, sigma=1.5):
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filt(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filter over the last two axes."""
    k = len(g)
    h = sum(g[i] * x[..., i : x.shape[-2] - k + 1 + i, :] for i in range(k))
    return sum(g[i] * h[..., :, i : x.shape[-1] - k + 1 + i] for i in range(k))


def _ssim_cs(x, y, g, data_range=255.0):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _filt(x, g), _filt(y, g)
    sxx = _filt(x * x, g) - mx * mx
    syy = _filt(y * y, g) - my * my
    sxy = _filt(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = ((2 * mx * my + c1) / (mx * mx + my * my + c1)) * cs
    return ssim.mean(axis=(-2, -1)), cs.mean(axis=(-2, -1))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (Wang et al. 2003) on HxWx3 uint8 images, averaged over RGB channels.

    Images smaller than the 5-scale minimum (161 px) use as many scales as fit.
    """
    x = a.astype(np.float64).transpose(2, 0, 1)
    y = b.astype(np.float64).transpose(2, 0, 1)
    g = _gauss()
    levels = 5
    while levels > 1 and min(x.shape[1:]) < (11 - 1) * 2 ** (levels - 1) + 1:
        levels -= 1
    w = _MS_WEIGHTS[:levels] / _MS_WEIGHTS[:levels].sum()
    vals = []
    for i in range(levels):
        if min(x.shape[1:]) < 11:
            break
        ssim, cs = _ssim_cs(x, y, g)
        vals.append(np.maximum(ssim if i == levels - 1 else cs, 0))
        if i < levels - 1:
            h2, w2 = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
            x = x[:, :h2, :w2].reshape(3, h2 // 2, 2, w2 // 2, 2).mean(axis=(2, 4))
            y = y[:, :h2, :w2].reshape(3, h2 // 2, 2, w2 // 2, 2).mean(axis=(2, 4))
    if not vals:
        return float(np.mean((a == b)))
    w = w[: len(vals)] / w[: len(vals)].sum()
    per_channel = np.prod([v ** wi for v, wi in zip(vals, w)], axis=0)
    return float(per_channel.mean())
