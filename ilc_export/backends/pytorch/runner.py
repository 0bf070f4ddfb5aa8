"""The PyTorch reference backend: runs the checkpoint's modules directly, on CPU or a CUDA GPU.

Device-resident coding (FUSED_TILES): ``encode_tile`` / ``decode_tile`` keep y, z, mu and
y_hat as tensors on the device; only the pixels, w / w_hat and the integer symbols cross.
The symbols are computed on the device with the codec's exact rule (float64 y - mu, round
half to even, NaN -> 0, clamp), so a file is byte-identical to the per-graph host path on
the same device. DEVICE_PIXELS: the uint8 tile goes up and the uint8 tile comes back, and
the conversions run on the device (a 256-entry table for x / 255, numpy's own float32
values, so the division cannot differ; round(x * 255) in float32, half to even, as numpy).

REFINE: with ``refine`` > 0 (a loader option, which sets ``refine_fn``), encode_tile replaces y by
``ilc_reference.refine.refine_latents``' choice for the same w_hat before the symbols are
taken: gradient steps (fp32, outside inference mode) towards the lowest rate + lambda * MSE
through this model's own decoder, the MSE over the tile's ``valid`` region only (padding is
never shown). Files stay decodable by every backend.

fp16 (a CUDA device only): forward and inverse run under autocast; hyper_mean always runs in
fp32, so mu stays as close as possible to what an fp32 decoder computes. Only the
reconstruction moves with fp16; every symbol and CDF index stays exact.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ...codec.entropy import MAX_ABS_SYMBOL
from ..base import Runner
from . import SPEC


def _writable(a: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays (decoded images often are): copy those only."""
    return a if a.flags.writeable else a.copy()


class TorchRunner(Runner):
    name = SPEC.name
    capabilities = SPEC.capabilities

    def __init__(self, ckpt: Path, model_id: str, model, dev, precision: str = "fp32"):
        """`model`: the reference model, already on torch device `dev` (see :func:`.loader.load`)."""
        import torch

        self._torch = torch
        self._dev = dev
        self.device = str(dev)
        self.precision = precision
        super().__init__(ckpt, model_id, model.cfg)
        self.model = model
        #: REFINE: f(model, x, y, w_hat, valid=(rows, cols)) -> refined y, set by the loader
        #: (None: encode y as it is)
        self.refine_fn = None
        #: the encoder add-on (``ilc_reference.encoder_addon``) the forward graph applies to the
        #: y it sends, or None; set by the loader
        self.correction = None
        self._fns = {
            "forward": self._forward,
            "hyper_mean": lambda w_hat: {"mu": model.hyper_mean(w_hat)},
            "inverse": self._inverse,
        }

    def _autocast(self):
        """fp16 autocast for the heavy transforms; a no-op at fp32."""
        if self.precision == "fp16":
            return self._torch.autocast(device_type="cuda", dtype=self._torch.float16)
        return contextlib.nullcontext()

    def _forward(self, image):
        with self._autocast():
            y, z, w = self.model.forward_graph(image, self.correction)
        return {"y": y.float(), "z": z.float(), "w": w.float()}

    def _inverse(self, y_hat, z):
        with self._autocast():
            x = self.model.synthesis(y_hat, z)
        return {"image": x.float()}

    def _pixels_in(self, px: np.ndarray):
        """(H,W,3) uint8 -> (1,3,H,W) float32 on the device, equal to image_io.to_nchw."""
        torch = self._torch
        if getattr(self, "_lut", None) is None:
            lut = np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(255.0)  # to_nchw's rule
            self._lut = torch.from_numpy(lut).to(self._dev)
        t = torch.from_numpy(_writable(np.ascontiguousarray(px, dtype=np.uint8))).to(self._dev)
        return self._lut[t.long()].permute(2, 0, 1).unsqueeze(0).contiguous()

    def _pixels_out(self, x):
        """(1,3,H,W) float -> (H,W,3) uint8 on the host, equal to nan_to_num + image_io.from_nchw."""
        torch = self._torch
        x = torch.nan_to_num(x[0].float(), nan=0.0, posinf=1.0, neginf=0.0)
        x8 = torch.clamp(torch.round(x * 255.0), 0, 255).to(torch.uint8)
        return x8.permute(1, 2, 0).contiguous().cpu().numpy()

    def _to_dev(self, a: np.ndarray):
        t = self._torch.from_numpy(_writable(np.ascontiguousarray(a, dtype=np.float32)))
        return t.to(self._dev, non_blocking=True) if self._dev.type == "cuda" else t

    def run(self, graph, feeds):
        self.check_graph(graph, feeds)
        with self._torch.inference_mode():
            out = self._fns[graph](**{k: self._to_dev(v) for k, v in feeds.items()})
            return {k: v.float().cpu().numpy() for k, v in out.items()}

    @property
    def refines(self) -> bool:
        return self.refine_fn is not None

    # -- FUSED_TILES ---------------------------------------------------------------
    def encode_tile(self, image, quantize_w, valid=None):
        torch = self._torch
        with torch.inference_mode():
            x = self._pixels_in(image) if image.dtype == np.uint8 else self._to_dev(image)
            out = self._forward(x)
            y, w = out["y"], out["w"]
            del out  # z is not needed to encode: it never leaves the device
            w_hat = quantize_w(w[0].cpu().numpy())
            if self.refine_fn is not None:
                y = self._refined(x, y, self._to_dev(w_hat[None]), valid)
            mu = self.model.hyper_mean(self._to_dev(w_hat[None]))
            # EntropyCodec.quantize_y on the device: float64 difference, half-to-even rounding
            d = torch.nan_to_num(y.double() - mu.double(), nan=0.0)
            sym = torch.clamp(torch.round(d), -MAX_ABS_SYMBOL, MAX_ABS_SYMBOL).to(torch.int32)
            return w_hat, sym[0].cpu().numpy()

    def _refined(self, x, y, w_hat, valid):
        """REFINE: the refined y (autograd needs normal tensors: the inference-mode ones are
        cloned outside inference mode)."""
        with self._torch.inference_mode(False), self._torch.enable_grad():
            y = self.refine_fn(self.model, x.clone().float(), y.clone(), w_hat.clone(), valid=valid)
        return y.detach()

    def decode_tile(self, w_hat, y_sym, z):
        torch = self._torch
        with torch.inference_mode():
            mu = self.model.hyper_mean(self._to_dev(w_hat[None]))
            sym = torch.from_numpy(np.ascontiguousarray(y_sym, dtype=np.int32)[None])
            y_hat = sym.to(self._dev, non_blocking=self._dev.type == "cuda").float() + mu
            zt = torch.zeros(tuple(z), dtype=torch.float32, device=self._dev) if isinstance(z, tuple) else self._to_dev(z)
            return self._pixels_out(self._inverse(y_hat, zt)["image"])

    def tables_path(self) -> Path:
        return self.source
