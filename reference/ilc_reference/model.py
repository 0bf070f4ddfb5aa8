"""The ILC model (invertible transform + hyperprior) and its conv baseline.

Both expose the same four pieces the toolkit exports and runs:
  analysis(x) -> y (and z for ILC), hyper_analysis(y) -> w,
  hyper_mean(w_hat) -> mu, hyper_scale(w_hat) -> v = log(sigma),
  synthesis(y_hat, z) -> x_hat.

ILC decode: x_hat = f^-1(y_hat, z_hat) with z_hat = z (the surrogate: 0 or a seeded
N(0, T^2) sample) by default. With ``cfg.z_model == "g"`` a small decoder-side network g
predicts the dropped information, z_hat = g(y_hat) + z, i.e. z ~ N(g(y_hat), T^2): g is part
of synthesis (the inverse graph); the forward graph, the bitstream and the entropy model are
unchanged, and f itself stays exactly invertible (``model.f.inverse``). With
``cfg.post_hidden`` an image-domain post-filter p follows f^-1 in synthesis: x_hat = p(f^-1(.)).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import SCALE_MAX, SCALE_MIN, ModelConfig
from .entropy import (
    FactorizedPrior,
    HyperAnalysis,
    HyperSynthesis,
    gaussian_likelihood,
    ste_round,
)
from .invertible import InvertibleTransform


class _ScaledConv(nn.Conv2d):
    """Conv whose parameters are stored divided by `scale` and multiplied back in forward:
    the same function, but Adam (whose steps are ~lr in parameter units) moves its output
    `scale` times faster (equalised learning rate). scale == 1 is a plain conv."""

    def __init__(self, cin, cout, k, scale: float = 1.0, zero: bool = False):
        super().__init__(cin, cout, k, padding=k // 2)
        self.scale = float(scale)
        with torch.no_grad():
            if zero:
                self.weight.zero_()
                self.bias.zero_()
            elif self.scale != 1.0:
                self.weight.div_(self.scale)
                self.bias.div_(self.scale)

    def forward(self, x):
        if self.scale == 1.0:
            return super().forward(x)
        return nn.functional.conv2d(x, self.weight * self.scale, self.bias * self.scale, padding=self.padding)


class ZPredictor(nn.Module):
    """g: y_hat (M channels, H/16) -> z_hat (768 - M channels): three 3x3 convs, LeakyReLU.

    With ``cfg.g_refine_y`` the last conv has M more output channels, a correction r(y_hat)
    of y_hat's quantisation error (f^-1 then sees y_hat + r instead of y_hat). The last conv
    starts at zero, so a model with a fresh g decodes exactly like z = 0.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m, zc, h, s = cfg.latent_channels, cfg.z_channels, cfg.g_hidden, cfg.g_lr_scale
        self.refine = cfg.g_refine_y
        self.net = nn.Sequential(
            _ScaledConv(m, h, 3, s), nn.LeakyReLU(0.2),
            _ScaledConv(h, h, 3, s), nn.LeakyReLU(0.2),
            _ScaledConv(h, zc + (m if self.refine else 0), 3, s, zero=True),
        )

    def forward(self, y_hat):
        """-> (y for the inverse, z_hat mean)."""
        out = self.net(y_hat)
        if self.refine:
            m = y_hat.shape[1]
            return y_hat + out[:, :m], out[:, m:]
        return y_hat, out


class PostFilter(nn.Module):
    """p: x -> x + p(x), a residual image-domain filter after the synthesis (``cfg.post_hidden``
    wide): the ILC's f^-1, or the baseline's g_s (so that both can get the same decoder).

    f^-1 turns y_hat's quantisation error into structured artefacts that neither f (shared with
    the encoder) nor g (at H/16) can undo; p works at H/2: a stride-2 2x2 conv in, two 3x3
    convs, a stride-2 2x2 transposed conv out, which starts at zero (a fresh p is the identity).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.post_hidden
        out = nn.ConvTranspose2d(h, 3, 2, stride=2)
        with torch.no_grad():
            out.weight.zero_()
            out.bias.zero_()
        self.net = nn.Sequential(
            nn.Conv2d(3, h, 2, stride=2), nn.LeakyReLU(0.2),
            nn.Conv2d(h, h, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(h, h, 3, padding=1), nn.LeakyReLU(0.2),
            out,
        )

    def forward(self, x):
        return x + self.net(x)


class _Codec(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        m, nh = cfg.latent_channels, cfg.hyper_channels
        self.h_a = HyperAnalysis(m, nh)
        self.h_s_mean = HyperSynthesis(nh, m, act="lrelu")
        self.h_s_scale = HyperSynthesis(nh, m, act="relu")
        self.prior = FactorizedPrior(nh)

    # pieces -----------------------------------------------------------------
    def analysis(self, x):  # -> (y, z)
        raise NotImplementedError

    def synthesis(self, y_hat, z):
        raise NotImplementedError

    def hyper_mean(self, w_hat):
        return self.h_s_mean(w_hat)

    def hyper_scale(self, w_hat):
        """log(sigma), before clamping to the scale table's range."""
        return self.h_s_scale(w_hat)

    def zeros_z(self, y):
        b, _, h, w = y.shape
        return y.new_zeros(b, self.cfg.z_channels, h, w)

    def forward_graph(self, x, correction=None):
        """The forward graph: (y, z, w) of an image. The hyperprior w always sees y itself; with
        an encoder add-on (``correction``, see ``encoder_addon``) the y sent is correction(y, z)."""
        y, z = self.analysis(x)
        if z is None:  # the baseline has no z
            z = self.zeros_z(y)
        w = self.h_a(y)
        if correction is not None:
            y = correction(y, z)
        return y, z, w

    # training ---------------------------------------------------------------
    def forward(self, x, quant: str = "noise"):
        """Training/eval pass: returns x_hat, likelihoods, z and the rate in bits."""
        y, z = self.analysis(x)
        w = self.h_a(y)
        if quant == "noise" and self.training:
            w_q = w + torch.empty_like(w).uniform_(-0.5, 0.5)
        else:
            w_q = torch.round(w)
        w_lik = self.prior.likelihood(w_q)
        w_hat = ste_round(w) if self.training else w_q  # synthesis side sees integers
        mu = self.hyper_mean(w_q if self.training else w_hat)
        sigma = torch.exp(self.hyper_scale(w_q if self.training else w_hat)).clamp(SCALE_MIN, SCALE_MAX)
        if quant == "noise" and self.training:
            r = y - mu + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            r = torch.round(y - mu)
        y_lik = gaussian_likelihood(r, sigma)
        y_hat = ste_round(y - mu) + mu
        z_mean = None
        if z is not None and self.cfg.has_g:
            y_in, z_mean = self.g(y_hat)  # trained through the inverse, on the image error
            x_hat = self._inverse(y_in, z_mean)
        else:
            x_hat = self.synthesis(y_hat, self.zeros_z(y) if z is not None else None)
        bits = -(torch.log2(y_lik).sum() + torch.log2(w_lik).sum())
        return {"x_hat": x_hat, "bits": bits, "y_lik": y_lik, "w_lik": w_lik, "z": z, "y": y, "z_mean": z_mean}

    def loss(self, x, out):
        n_px = x.shape[0] * x.shape[2] * x.shape[3]
        bpp = out["bits"] / n_px
        mse = torch.mean((out["x_hat"] - x) ** 2)
        if out["z"] is None:
            zterm = torch.zeros((), device=x.device)
        elif out.get("z_mean") is not None:
            # z ~ N(g(y_hat), I): |z - g(y_hat)|^2 / 2. g is detached here: it learns only
            # through the inverse on the image error (the spec's probe: training g on this
            # term lowered the z = 0 ceiling, through the inverse raised it); f is pulled
            # towards a z that g can predict.
            zterm = torch.mean((out["z"] - out["z_mean"].detach()) ** 2) / 2
        else:
            zterm = torch.mean(out["z"] ** 2) / 2
        total = bpp + self.cfg.lmbda * 255**2 * mse + self.cfg.beta * zterm
        psnr = -10 * math.log10(max(mse.item(), 1e-12))
        return total, {"loss": total.item(), "bpp": bpp.item(), "mse": mse.item(), "psnr": psnr, "z2": zterm.item()}


class ILC(_Codec):
    """Invertible Lossy Compression: f replaces the encoder/decoder pair."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.f = InvertibleTransform(cfg)
        if cfg.has_g:
            self.g = ZPredictor(cfg)  # only then: old checkpoints keep their exact key set
        if cfg.has_post:
            self.post = PostFilter(cfg)

    def analysis(self, x):
        return self.f(x)

    def z_mean(self, y_hat):
        """The decoder's estimate of the dropped z: g(y_hat), or 0 without g."""
        return self.g(y_hat)[1] if self.cfg.has_g else self.zeros_z(y_hat)

    def synthesis(self, y_hat, z):
        """x_hat = f^-1(y_hat, z_hat); z is the surrogate (0 or a seeded sample), centred on
        g(y_hat) when the model has g. This is the whole inverse graph."""
        if self.cfg.has_g:
            y_in, z_mean = self.g(y_hat)
            return self._inverse(y_in, z_mean + z)
        return self._inverse(y_hat, z)

    def _inverse(self, y, z):
        """f^-1, then the post-filter when the model has one."""
        x = self.f.inverse(y, z)
        return self.post(x) if self.cfg.has_post else x


class GDN(nn.Module):
    """Generalized divisive normalization (Balle 2016), simple reparametrised form."""

    def __init__(self, c: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(c))
        self.gamma = nn.Parameter(0.1 * torch.eye(c))

    def forward(self, x):
        beta = self.beta.abs() + 1e-6
        gamma = self.gamma.abs()
        norm = torch.sqrt(nn.functional.conv2d(x * x, gamma[:, :, None, None], beta))
        return x * norm if self.inverse else x / norm


def _down(cin, cout):
    return nn.Conv2d(cin, cout, 5, stride=2, padding=2)


def _up(cin, cout):
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


class Baseline(_Codec):
    """Non-invertible baseline: Balle/Minnen conv analysis + synthesis, same entropy model."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        n, m = cfg.baseline_channels, cfg.latent_channels
        self.g_a = nn.Sequential(_down(3, n), GDN(n), _down(n, n), GDN(n), _down(n, n), GDN(n), _down(n, m))
        self.g_s = nn.Sequential(
            _up(m, n), GDN(n, True), _up(n, n), GDN(n, True), _up(n, n), GDN(n, True), _up(n, 3)
        )
        if cfg.has_post:
            self.post = PostFilter(cfg)

    def analysis(self, x):
        return self.g_a(x), None

    def synthesis(self, y_hat, z=None):
        x = self.g_s(y_hat)
        return self.post(x) if self.cfg.has_post else x

    def zeros_z(self, y):
        b, _, h, w = y.shape
        return y.new_zeros(b, 0, h, w)


def build_model(cfg: ModelConfig) -> _Codec:
    if cfg.kind == "ilc":
        return ILC(cfg)
    if cfg.kind == "baseline":
        return Baseline(cfg)
    raise ValueError(f"unknown model kind {cfg.kind!r} (expected 'ilc' or 'baseline')")


def grow_g(model: ILC, hidden: int | None = None, refine_y: bool = False) -> ILC:
    """A copy of an ILC with g widened to ``hidden`` and/or given the y-refinement head
    (``cfg.g_refine_y``) that decodes exactly as before: the new units' outgoing weights and the
    new head start at zero, so training grows them from the model's own function. f, the
    hyperprior and everything but g are copied unchanged."""
    import dataclasses

    old_cfg = model.cfg
    if not old_cfg.has_g:
        raise ValueError(f"{old_cfg.name}: no decoder-side g to grow (z_model {old_cfg.z_model!r})")
    oh, m = old_cfg.g_hidden, old_cfg.latent_channels
    nh = max(hidden or oh, oh)
    cfg = dataclasses.replace(old_cfg, g_hidden=nh, g_refine_y=old_cfg.g_refine_y or refine_y)
    new = build_model(cfg)
    missing, unexpected = new.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("g.")}, strict=False)
    assert not unexpected and all(k.startswith("g.") for k in missing), (missing, unexpected)
    old_y, new_y = (m if old_cfg.g_refine_y else 0), (m if cfg.g_refine_y else 0)
    src, dst = model.g.net, new.g.net
    with torch.no_grad():
        dst[0].weight[:oh] = src[0].weight  # the new hidden units keep their random init ...
        dst[0].bias[:oh] = src[0].bias
        dst[2].weight[:, oh:] = 0  # ... and feed nothing yet
        dst[2].weight[:oh, :oh] = src[2].weight
        dst[2].bias[:oh] = src[2].bias
        dst[4].weight.zero_()
        dst[4].bias.zero_()
        dst[4].weight[new_y - old_y:, :oh] = src[4].weight  # the z outputs follow the y head
        dst[4].bias[new_y - old_y:] = src[4].bias
    return new.train(model.training)


def add_post_filter(model: _Codec, hidden: int) -> _Codec:
    """A copy of a model (ILC or baseline) with an image-domain post-filter ``hidden`` wide (``cfg.post_hidden``)
    that decodes exactly as before: a new filter's output layer starts at zero, and a narrower
    filter of the model's own is widened with units that feed nothing yet (its weights copied,
    the new units' inputs random, their outgoing weights zero). A filter is never narrowed;
    everything else is copied unchanged."""
    import dataclasses

    old = model.cfg
    if old.has_post and hidden == old.post_hidden:
        return model
    if old.has_post and hidden < old.post_hidden:
        raise ValueError(f"{old.name}: has a post-filter {old.post_hidden} wide; it can widen, not narrow to {hidden}")
    new = build_model(dataclasses.replace(old, post_hidden=hidden))
    missing, unexpected = new.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("post.")}, strict=False)
    assert not unexpected and all(k.startswith("post.") for k in missing), (missing, unexpected)
    if old.has_post:
        oh, src, dst = old.post_hidden, model.post.net, new.post.net
        with torch.no_grad():
            dst[0].weight[:oh] = src[0].weight  # the new units keep their random inputs ...
            dst[0].bias[:oh] = src[0].bias
            for i in (2, 4):
                dst[i].weight[:, oh:] = 0  # ... and feed nothing yet
                dst[i].weight[:oh, :oh] = src[i].weight
                dst[i].bias[:oh] = src[i].bias
            dst[6].weight.zero_()
            dst[6].weight[:oh] = src[6].weight
            dst[6].bias.copy_(src[6].bias)
    return new.train(model.training)
