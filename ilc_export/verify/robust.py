"""Decodability under floating-point noise (docs/robustness.md).

Simulates an encoder on another GPU / fp16 / TensorRT by perturbing every transform
output by a relative noise, then checks that the *unperturbed* decoder recovers exactly
the symbols that were encoded. Only the integer path (w_hat -> scale indices) selects
CDFs, so this must hold for every image. The steps are the codec's own (``ImageCodec``'s
encode and decode protocol), with the noise injected through ``latents(perturb=...)``.
"""
from __future__ import annotations

import numpy as np

from ..pipeline.codec import ImageCodec


def _perturb(a: np.ndarray, rel: float, rng: np.random.Generator) -> np.ndarray:
    return (a * (1 + rel * rng.standard_normal(a.shape))).astype(np.float32)


def perturbed_round_trip(codec: ImageCodec, img: np.ndarray, rel: float = 1e-3, seed: int = 0,
                         ref: dict | None = None) -> dict:
    """Encode `img` (one tile: sides multiples of PAD_MULTIPLE) with noisy latents, decode the
    streams with the clean decoder.
    `ref`: the clean encoder's ``codec.latents(img)``, if the caller already has them."""
    rng = np.random.default_rng(seed)
    ref = ref if ref is not None else codec.latents(img)
    w_hat, y_sym = codec.symbols(codec.latents(img, perturb=lambda name, a: _perturb(a, rel, rng)))
    streams = codec.encode_symbols(w_hat, y_sym)
    w_dec, y_dec = codec.decode_symbols(streams, codec.tile_shape(*img.shape[:2]))  # the unperturbed decoder
    ref_w, ref_sym = codec.symbols(ref)
    return {
        "decoded_same_symbols": bool(np.array_equal(w_dec, w_hat) and np.array_equal(y_dec, y_sym)),
        "w_changed": int(np.count_nonzero(w_hat != ref_w)),
        "y_changed": int(np.count_nonzero(y_sym != ref_sym)),
        "symbols": int(y_sym.size + w_hat.size),
        "bytes": int(sum(len(s) for s in streams)),
    }
