"""Decodability under floating-point noise (SPEC section 2).

Simulates an encoder on another GPU / fp16 / TensorRT by perturbing every transform
output by a relative noise, then checks that the *unperturbed* decoder recovers exactly
the symbols that were encoded. Only the integer path (w_hat -> scale indices) selects
CDFs, so this must hold for every image.
"""
from __future__ import annotations

import numpy as np

from ..pipeline.codec import ImageCodec
from ..pipeline.image_io import model_input


def _perturb(a: np.ndarray, rel: float, rng: np.random.Generator) -> np.ndarray:
    return (a * (1 + rel * rng.standard_normal(a.shape))).astype(np.float32)


def perturbed_round_trip(codec: ImageCodec, img: np.ndarray, rel: float = 1e-3, seed: int = 0,
                         ref: dict | None = None) -> dict:
    """`ref`: the clean encoder's `codec.latents(img)`, if the caller already has them."""
    from ilc_reference.config import latent_shape

    rng = np.random.default_rng(seed)
    x = model_input(img)
    ref = ref if ref is not None else codec.latents(img)
    out = codec.runner.run("forward", {"image": x})
    w_hat = codec.entropy.quantize_w(_perturb(out["w"][0], rel, rng))
    mu = codec.runner.run("hyper_mean", {"w_hat": w_hat[None].astype(np.float32)})["mu"][0]
    y_sym = codec.entropy.quantize_y(_perturb(out["y"][0], rel, rng), _perturb(mu, rel, rng))
    streams = codec.entropy.encode(w_hat, y_sym)
    shapes = latent_shape(codec.cfg, x.shape[2], x.shape[3])
    w_dec, y_dec = codec.entropy.decode(streams, shapes["w"], shapes["y"])  # the unperturbed decoder
    ref_sym = codec.entropy.quantize_y(ref["y"], ref["mu"])
    return {
        "decoded_same_symbols": bool(np.array_equal(w_dec, w_hat) and np.array_equal(y_dec, y_sym)),
        "w_changed": int(np.count_nonzero(w_hat != ref["w_hat"])),
        "y_changed": int(np.count_nonzero(y_sym != ref_sym)),
        "symbols": int(y_sym.size + w_hat.size),
        "bytes": int(sum(len(s) for s in streams)),
    }
