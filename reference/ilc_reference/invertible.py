"""The invertible transform f: Haar levels and affine coupling blocks (IRN-style).

Every piece has an exact inverse, so f^-1(f(x)) == x up to float32 round-off.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .config import LEVELS, ModelConfig


class Haar(nn.Module):
    """Orthonormal 2x2 Haar transform: C channels -> 4C channels at half size.

    Output channels are ordered [LL(all C), LH(all C), HL(all C), HH(all C)] so the
    low-frequency band comes first (the split keeps the first channels as y).
    """

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor(
            [[[1, 1], [1, 1]], [[1, -1], [1, -1]], [[1, 1], [-1, -1]], [[1, -1], [-1, 1]]],
            dtype=torch.float32,
        ) / 2.0
        # grouped conv weight (4C, 1, 2, 2), band-major channel order
        w = k.unsqueeze(1).repeat(channels, 1, 1, 1)  # (4C,1,2,2), channel-major
        order = torch.arange(4 * channels).view(channels, 4).t().reshape(-1)
        self.register_buffer("weight", w, persistent=False)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inv_order", torch.argsort(order), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.weight, stride=2, groups=self.channels)
        return out[:, self.order]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(y[:, self.inv_order], self.weight, stride=2, groups=self.channels)


def _subnet(cin: int, cout: int, hidden: int) -> nn.Sequential:
    """Small conv subnet; 1x1 at the ends where channel counts are large (keeps params small)."""
    k_in = 3 if cin <= 64 else 1
    k_out = 3 if cout <= 64 else 1
    last = nn.Conv2d(hidden, cout, k_out, padding=k_out // 2)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)  # each block starts as the identity
    return nn.Sequential(
        nn.Conv2d(cin, hidden, k_in, padding=k_in // 2),
        nn.LeakyReLU(0.2),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.LeakyReLU(0.2),
        last,
    )


class AffineCoupling(nn.Module):
    """IRN block: y1 = x1 + F(x2); s = c*(2*sigmoid(H(y1))-1); y2 = x2*exp(s) + G(y1)."""

    def __init__(self, channels: int, hidden: int, clamp: float):
        super().__init__()
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        self.clamp = clamp
        self.F = _subnet(self.c2, self.c1, hidden)
        self.HG = _subnet(self.c1, 2 * self.c2, hidden)  # H and G share a trunk

    def _scale_shift(self, y1):
        h, g = self.HG(y1).chunk(2, dim=1)
        s = self.clamp * (2 * torch.sigmoid(h) - 1)
        return s, g

    def forward(self, x):
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        y1 = x1 + self.F(x2)
        s, g = self._scale_shift(y1)
        y2 = x2 * torch.exp(s) + g
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y):
        y1, y2 = y[:, : self.c1], y[:, self.c1 :]
        s, g = self._scale_shift(y1)
        x2 = (y2 - g) * torch.exp(-s)
        x1 = y1 - self.F(x2)
        return torch.cat([x1, x2], dim=1)


class InvConv1x1(nn.Module):
    """Learned invertible channel mix, W = P L (U + diag(sign*exp(logs))) (Glow's LU form).

    The LU form keeps W invertible during training; the inverse matrix is computed in
    float64 so the round trip stays at float32 round-off.
    """

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=torch.Generator().manual_seed(channels)))
        p, lower, upper = torch.linalg.lu(q)
        d = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(d))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.logs = nn.Parameter(torch.log(d.abs()))
        self.register_buffer("lmask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))

    def matrix(self) -> torch.Tensor:
        lower = self.lower * self.lmask + self.eye
        upper = self.upper * self.lmask.t() + torch.diag(self.sign * torch.exp(self.logs))
        return self.perm @ lower @ upper

    def forward(self, x):
        w = self.matrix()
        return F.conv2d(x, w[:, :, None, None])

    def inverse(self, y):
        w_inv = torch.linalg.inv(self.matrix().double()).to(y.dtype)
        return F.conv2d(y, w_inv[:, :, None, None])


class InvertibleTransform(nn.Module):
    """f: image (B,3,H,W) -> (y, z) at H/16, and its exact inverse."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.levels = nn.ModuleList()
        c = 3
        for lvl in range(LEVELS):
            mods: list[nn.Module] = [Haar(c)]
            c *= 4
            for b in range(cfg.blocks_per_level[lvl]):
                if lvl in cfg.inv_conv_levels:
                    mods.append(InvConv1x1(c))
                mods.append(AffineCoupling(c, cfg.hidden_per_level[lvl], cfg.clamp))
            self.levels.append(nn.ModuleList(mods))

    def forward(self, x):
        h = x
        for mods in self.levels:
            for m in mods:
                h = m(h)
        m_ = self.cfg.latent_channels
        return h[:, :m_], h[:, m_:]

    def inverse(self, y, z):
        h = torch.cat([y, z], dim=1)
        for mods in reversed(self.levels):
            for m in reversed(mods):
                h = m.inverse(h)
        return h
