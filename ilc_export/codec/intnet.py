"""The exact integer hyper-scale network (numpy only).

It maps the decoded hyper-latent w_hat (integers) to one scale index per element of y.
Encoder and decoder must agree on every index, on every machine, so the computation is
integer arithmetic carried out in float64:

    layer 0, 1:  a = clip(floor((conv3x3(x, W_l) + b_l) / 2**k_l), 0, act_max_l),
                 then depth-to-space by 2 (PixelShuffle; commutes with the elementwise ops)
    layer 2:     v_int = conv3x3(a, W_2) + b_2          (~ log(sigma) * 2**s)
    index:       #{i : v_int >= T_i}                    (T: tables.hs.thresholds)

conv3x3 has zero padding 1. Exactness: :meth:`CodecTables.accumulator_bounds` proves
(and CodecTables.validate enforces) in_max * sum|W[o]| + |b[o]| < 2**53 for every
output channel o of every layer, where in_max is the bound of the layer's input
(max |w_hat| for layer 0, act_max for the others). Every product and every partial sum
of every dot product, in any summation order, is then an integer below 2**53, hence
exactly representable in float64, so BLAS (any blocking, FMA or not, any thread count)
returns the exact integer result. floor(acc * 2**-k) of an exact integer is exact too.
"""
from __future__ import annotations

import numpy as np

from .tables import CodecTables

#: Memory budget (bytes) for one im2col band; bounds peak memory on huge images.
BAND_BYTES = 32 * 2**20


def _pixel_shuffle(x: np.ndarray) -> np.ndarray:
    """(4C, H, W) -> (C, 2H, 2W), torch.nn.PixelShuffle(2) order."""
    c4, h, w = x.shape
    c = c4 // 4
    return x.reshape(c, 2, 2, h, w).transpose(0, 3, 1, 4, 2).reshape(c, 2 * h, 2 * w)


def _conv3x3_bands(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, post, out: np.ndarray) -> None:
    """out[:, r0:r1] = post(conv3x3(x) + bias) computed in row bands (float64, exact).

    x: (Cin, H, W) holding exact integers; weight (Cout, Cin, 3, 3) int; bias (Cout,) int.
    """
    cin, h, w = x.shape
    cout = weight.shape[0]
    w2 = weight.reshape(cout, cin * 9).astype(np.float64)
    b = bias.astype(np.float64)[:, None]
    rows = max(1, min(h, BAND_BYTES // max(1, cin * 9 * w * 8)))
    # inputs are integers below 2**24 (w_hat within +-2**20, activations <= act_max < 2**24),
    # so float32 holds them exactly; bands are widened to float64 for the products
    xp = np.zeros((cin, h + 2, w + 2), np.float32)
    xp[:, 1:-1, 1:-1] = x
    cols = np.empty((cin, 3, 3, rows, w), np.float64)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        n = r1 - r0
        c = cols[:, :, :, :n] if n < rows else cols
        for kh in range(3):
            for kw in range(3):
                c[:, kh, kw] = xp[:, r0 + kh:r1 + kh, kw:kw + w]
        acc = w2 @ c.reshape(cin * 9, n * w)
        acc += b
        out[:, r0:r1] = post(acc).reshape(cout, n, w)


def _check_w_hat(tables: CodecTables, w_hat: np.ndarray) -> np.ndarray:
    w_hat = np.asarray(w_hat)
    if w_hat.ndim != 3 or w_hat.shape[0] != tables.hyper_channels:
        raise ValueError(f"w_hat must have shape ({tables.hyper_channels}, h, w), got {w_hat.shape}")
    if w_hat.dtype.kind not in "iu":
        raise ValueError(f"w_hat must be integers, got dtype {w_hat.dtype}")
    if w_hat.size:
        lo = tables.prior_lo.astype(np.int64)
        hi = lo + tables.prior_len - 1
        mn = w_hat.reshape(w_hat.shape[0], -1).min(axis=1)
        mx = w_hat.reshape(w_hat.shape[0], -1).max(axis=1)
        if (mn < lo).any() or (mx > hi).any():
            raise ValueError("w_hat outside the prior's support; clamp it with EntropyCodec.quantize_w")
    return w_hat


def hidden_activations(tables: CodecTables, w_hat: np.ndarray) -> np.ndarray:
    """The last hidden activation a (Nh, 4h, 4w) as exact integers in float32 (< 2**24)."""
    w_hat = _check_w_hat(tables, w_hat)
    x = w_hat.astype(np.float32)  # exact: |w_hat| <= 2**20
    for layer in range(2):
        k = int(tables.shifts[layer])
        amax = float(tables.act_max[layer])
        inv = 2.0**-k

        def post(acc, inv=inv, amax=amax):
            acc *= inv  # exact: power of two
            np.floor(acc, out=acc)
            np.clip(acc, 0.0, amax, out=acc)
            return acc

        wt = tables.weights[layer]
        conv = np.empty((wt.shape[0],) + x.shape[1:], np.float32)  # exact: 0 <= a <= act_max < 2**24
        _conv3x3_bands(x, wt, tables.biases[layer], post, conv)
        x = _pixel_shuffle(conv)
    return x


def v_int(tables: CodecTables, w_hat: np.ndarray) -> np.ndarray:
    """Integer log-scale v_int (M, 4h, 4w) as exact integers in float64 (tests, analysis)."""
    a = hidden_activations(tables, w_hat)
    out = np.empty((tables.latent_channels,) + a.shape[1:], np.float64)
    _conv3x3_bands(a, tables.weights[2], tables.biases[2], lambda acc: acc, out)
    return out


def indices_from_v(tables: CodecTables, v: np.ndarray) -> np.ndarray:
    """Scale index = number of thresholds T_i with v >= T_i (0..S-1), uint8."""
    t = tables.thresholds.astype(np.float64)  # exact: |T| < 2**53
    return np.searchsorted(t, v, side="right").astype(np.uint8)


def scale_indices(tables: CodecTables, w_hat: np.ndarray) -> np.ndarray:
    """Scale index (uint8, shape (M, 4h, 4w)) of every y element, bit-exact everywhere."""
    if tables.num_scales > 256:
        raise ValueError("more than 256 scales do not fit uint8 indices")
    a = hidden_activations(tables, w_hat)
    out = np.empty((tables.latent_channels,) + a.shape[1:], np.uint8)
    t = tables.thresholds.astype(np.float64)
    _conv3x3_bands(a, tables.weights[2], tables.biases[2],
                   lambda acc: np.searchsorted(t, acc, side="right").astype(np.uint8), out)
    return out


def log_scale_of_v(tables: CodecTables, v: np.ndarray) -> np.ndarray:
    """Approximate float log(sigma) of v_int (analysis only; never used to pick a CDF)."""
    return np.asarray(v, np.float64) * 2.0**-tables.log2_scale
