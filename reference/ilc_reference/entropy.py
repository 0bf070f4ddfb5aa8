"""Hyperprior entropy model: factorized prior on w, mean-scale Gaussian on y.

These are the float (training) models. The codec derives integer CDF tables and an
integer scale network from them once (ilc_export.codec.tables); the float versions
here are only used for training and for estimated rates.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .config import NUM_SCALES, SCALE_MAX, SCALE_MIN

LIKELIHOOD_BOUND = 1e-9


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class FactorizedPrior(nn.Module):
    """Per-channel learned CDF (Balle et al. 2018, appendix 6.1) for the hyper-latent."""

    def __init__(self, channels: int, filters=(3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """v: (C, 1, N) -> cumulative logits (C, 1, N)."""
        h = v
        for i in range(len(self.matrices)):
            h = torch.matmul(F.softplus(self.matrices[i]), h) + self.biases[i]
            if i < len(self.factors):
                h = h + torch.tanh(self.factors[i]) * torch.tanh(h)
        return h

    def likelihood(self, w: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit interval around each value of w (B, C, H, W)."""
        b, c, hh, ww = w.shape
        v = w.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        p = p.reshape(c, b, hh, ww).permute(1, 0, 2, 3)
        return p.clamp_min(LIKELIHOOD_BOUND)

    @torch.no_grad()
    def cdf_grid(self, lo: int, hi: int) -> torch.Tensor:
        """CDF at half-integers lo-0.5 .. hi+0.5 per channel: (C, hi-lo+2), float64."""
        pts = torch.arange(lo, hi + 2, dtype=torch.float32) - 0.5
        v = pts.view(1, 1, -1).expand(self.channels, 1, -1)
        return torch.sigmoid(self.logits_cdf(v).double()).squeeze(1)


def scale_table() -> torch.Tensor:
    """The NUM_SCALES log-spaced standard deviations every coder uses."""
    return torch.exp(torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), NUM_SCALES, dtype=torch.float64))


def log_scale_step() -> float:
    return (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (NUM_SCALES - 1)


def scale_index_from_log(v: torch.Tensor) -> torch.Tensor:
    """Float reference of the scale index: nearest table entry in the log domain."""
    idx = torch.floor((v - math.log(SCALE_MIN)) / log_scale_step() + 0.5)
    return idx.clamp(0, NUM_SCALES - 1).long()


def gaussian_likelihood(residual: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Mass of [r-0.5, r+0.5] under N(0, sigma)."""
    inv = 1.0 / (sigma * math.sqrt(2))
    upper = 0.5 * torch.erfc(-(residual + 0.5) * inv)
    lower = 0.5 * torch.erfc(-(residual - 0.5) * inv)
    # use the upper tail where it is more accurate
    upper_t = 0.5 * torch.erfc((residual - 0.5) * inv)
    lower_t = 0.5 * torch.erfc((residual + 0.5) * inv)
    p = torch.where(residual > 0, upper_t - lower_t, upper - lower)
    return p.clamp_min(LIKELIHOOD_BOUND)


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class HyperAnalysis(nn.Module):
    """h_a: y (M, H/16) -> w (Nh, H/64)."""

    def __init__(self, m: int, nh: int):
        super().__init__()
        self.net = nn.Sequential(
            _conv(m, nh, 3), nn.LeakyReLU(0.2),
            _conv(nh, nh, 5, 2), nn.LeakyReLU(0.2),
            _conv(nh, nh, 5, 2),
        )

    def forward(self, y):
        return self.net(y)


class HyperSynthesis(nn.Module):
    """w_hat (Nh, H/64) -> (M, H/16) through conv + depth-to-space upsampling.

    Depth-to-space and ReLU keep the scale branch representable as an integer network.
    """

    def __init__(self, nh: int, m: int, act: str):
        super().__init__()
        a = nn.ReLU() if act == "relu" else nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            _conv(nh, 4 * nh, 3), nn.PixelShuffle(2), a,
            _conv(nh, 4 * nh, 3), nn.PixelShuffle(2), a,
            _conv(nh, m, 3),
        )

    def forward(self, w_hat):
        return self.net(w_hat)
