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

Fast path (scale_indices' default where the C extension is built: _scale_indices_c; the
numpy functions below remain the reference, ``exact_f64=True`` / $ILC_INTNET_F64=1):

- Layers 0, 1: im2col in C (float32 -> float64, a copy), the float64 GEMM above (exact), then
  one C pass (hidden_post) per band: x = (acc + b) * 2**-k (exact: acc + b is an integer below
  2**53, the scaling a power of two) and a = trunc(min(max(x, 0), M)) with M = act_max. For
  an integer M >= 0 this equals clip(floor(x), 0, M): on [0, M] truncation is floor, below 0
  both give 0, above M both give M. a < 2**24 is exact in float32; it is written
  pixel-shuffled into the zero-padded input of the next layer (no numpy pass in between).
- Layer 1 (WINOGRAD_LAYERS; $ILC_INTNET_WINOGRAD=0 turns it off): Winograd F(2x2, 3x3) in
  exact integer arithmetic instead of im2col + GEMM (16 GEMMs over channels, 2.25x fewer
  multiplications). U = (2G) W (2G)^T is an integer filter (4x the usual one), V = B^T d B
  sums 4 inputs with signs (|V| <= 4 in_max), and Y = A^T [sum_c U_c (.) V_c] A = 4 conv
  exactly. _winograd_weights checks 4 in_max max_o sum_c |U_ij[o, c]| < 2**53 for every
  position ij (else the layer runs the im2col GEMM): every partial sum of the float64 GEMM
  is then an exact integer. The output transform runs in int64 (wino_post), and
  y4 / 4 + b = acc + b as in hidden_post. Where the GEMM's outputs are moreover below
  2**51 (checked: the shipped tables, whose layer-1 inputs are >= 0), wino_post converts
  them to int64 with the 1.5 * 2**52 bit trick (vectorised) and applies the floor, shift and
  clip as z = 4 (conv + b), min(max(z, 0) >> (k + 2), act_max). Layer 0 (a 9x15 tile of
  w_hat on a 1080p frame) gains nothing from it and stays on the GEMM.
- Layer 2 (default, WINOGRAD_LAYERS): float32 Winograd F(2x2, 3x3), 16 float32 GEMMs over the
  48 channels (2.25x fewer multiplications than the im2col GEMM, no im2col), with the
  per-element bound of _winograd_last_weights (GEMM rounding of each transformed product,
  float32 rounding of the integer filter U, the float64 output transform and the float32 v:
  B = wscale_o * cn_p, cn_p from the norms of the transformed input columns). It is ~16x
  tighter than the direct GEMM's bound (K = 48 instead of 432 terms per dot product), so
  fewer elements need the exact recomputation (61 against 301 on a 1080p tile). Settling is
  last_post's, below; tests/test_codec_fastpath.py checks the bound itself on activations
  at the edges of their range.
- Layer 2 (im2col path, WINOGRAD_LAYERS without 2): float32 GEMM with the error bound of _last_layer_indices_f32, B = gamma_{K+2}
  ||W_o|| ||a_p|| (1 + 2**-20). The margin covers the float64 rounding of the norms
  (||a_p||^2 and ||W_o||^2 are sums of at most K squares of integers, relative error below
  K 2**-53 < 2**-40, none for the shipped tables' activations; sqrt and products: a few
  2**-53) and v32 + b is exact in float64 (an integer below 2**53). Settling (C, last_post) without
  table lookups: the thresholds are nearly evenly spaced; with L(i) = T_0 + i * step, step =
  (T_last - T_0) / (S - 2) and D = max_i |T_i - L(i)|, the interval [v - B - m, v + B + m],
  m = D + 16 + 2**-40 (|T_0| + |T_last|) (the float64 rounding of these few operations is
  below 1 while |v| + B < 2**46, which is required), is mapped to u = (. - T_0) / step; if
  both ends floor to the same f (clamped to [-1, S - 2]), then T_i <= v - B for i <= f and
  T_i > v + B for i > f, so the index of every value in [v - B, v + B] (the exact v among
  them) is f + 1. Elements not settled so (a fraction of a percent on real frames; all when the
  thresholds are not evenly spaced, m >= step / 4) go through the per-element test against
  the two neighbouring thresholds and, if the bound still does not settle them, the exact
  float64 dot product (0.15 % of the elements of a 1080p frame). So every index equals the
  float64 path's, on every input.
  tests/test_codec_fastpath.py checks this on the shipped models, on w_hat at the bounds of
  the prior's support and on forged tables.
"""
from __future__ import annotations

import math
import threading

import numpy as np

from .tables import CodecTables

#: Memory budget (bytes) for one im2col band; bounds peak memory on huge images.
BAND_BYTES = 32 * 2**20
#: Band budget of the Winograd layers: their GEMM inputs and outputs (4x an im2col GEMM's
#: output) stay in a 1-2 MB L2 cache between the transforms and the GEMMs. On the 2-core
#: EPYC project machine (512 KB L2 per core) 2 MB bands made the scale net of a 1080p frame
#: ~7 % faster than whole-tile bands; 512 KB bands were 20 % slower (GEMMs too narrow).
CACHE_BAND_BYTES = 2 * 2**20


def _pixel_shuffle(x: np.ndarray) -> np.ndarray:
    """(4C, H, W) -> (C, 2H, 2W), torch.nn.PixelShuffle(2) order."""
    c4, h, w = x.shape
    c = c4 // 4
    return x.reshape(c, 2, 2, h, w).transpose(0, 3, 1, 4, 2).reshape(c, 2 * h, 2 * w)


def _conv3x3_bands(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, post, out: np.ndarray, tag: str = "") -> None:
    """out[:, r0:r1] = post(conv3x3(x) + bias) computed in row bands (float64, exact).

    x: (Cin, H, W) holding exact integers; weight (Cout, Cin, 3, 3) int; bias (Cout,) int.
    """
    cin, h, w = x.shape
    cout = weight.shape[0]
    w2 = weight.reshape(cout, cin * 9).astype(np.float64)
    b = bias.astype(np.float64)[:, None]
    rows = _band_rows(h, max(1, min(h, BAND_BYTES // max(1, cin * 9 * w * 8))))
    # inputs are integers below 2**24 (w_hat within +-2**20, activations <= act_max < 2**24),
    # so float32 holds them exactly; bands are widened to float64 for the products
    xp = _work("xp" + tag, (cin, h + 2, w + 2), np.float32)
    xp[:, 0] = 0
    xp[:, -1] = 0
    xp[:, :, 0] = 0
    xp[:, :, -1] = 0
    xp[:, 1:-1, 1:-1] = x

    def band(r0):
        r1 = min(h, r0 + rows)
        n = r1 - r0
        c = _work("cols" + tag, (cin, 3, 3, n, w), np.float64)
        for kh in range(3):
            for kw in range(3):
                c[:, kh, kw] = xp[:, r0 + kh:r1 + kh, kw:kw + w]
        acc = _work("acc" + tag, (cout, n * w), np.float64)
        np.matmul(w2, c.reshape(cin * 9, n * w), out=acc)
        acc += b
        out[:, r0:r1] = post(acc).reshape(cout, n, w)

    _run_bands(h, rows, band)


def entropy_threads() -> int:
    """Threads of the integer net: $ILC_ENTROPY_THREADS, default 1. On the 2-core project
    machine under load, 2 threads cost 15-20 % more CPU and gained no wall time (measured
    2026-11-27, benchmarks/README.md); on an idle many-core CPU (Orin) 2-4 can help."""
    import os

    try:
        n = int(os.environ.get(THREADS_ENV, "1"))
    except ValueError:
        n = 1
    if n <= 1:
        return 1
    return min(n, os.cpu_count() or 1)


THREADS_ENV = "ILC_ENTROPY_THREADS"
_POOL: list = []
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:  # a forked child has the pool object but not its threads
    global _POOL_LOCK
    _POOL.clear()
    _POOL_LOCK = threading.Lock()


if hasattr(__import__("os"), "register_at_fork"):
    __import__("os").register_at_fork(after_in_child=_forget_pool)


def _band_rows(h: int, rows: int) -> int:
    """Rows per band: the memory bound, and at least one band per thread."""
    t = entropy_threads()
    return max(1, min(rows, -(-h // t))) if t > 1 else rows


def _run_bands(h: int, rows: int, fn) -> None:
    """fn(r0) for every band; bands run in parallel threads (each with one BLAS thread and
    its own scratch arrays; numpy's GEMM, copies and the C kernels release the GIL)."""
    starts = list(range(0, h, rows))
    t = entropy_threads()
    if t <= 1 or len(starts) <= 1:
        for r0 in starts:
            fn(r0)
        return
    with _POOL_LOCK:
        if not _POOL or _POOL[0][1] != t:
            from concurrent.futures import ThreadPoolExecutor

            if _POOL:
                _POOL.pop()[0].shutdown(wait=False)
            _POOL.append((ThreadPoolExecutor(max_workers=t, thread_name_prefix="ilc-intnet"), t))
        pool = _POOL[0][0]

    def job(r0):
        with _blas_threads():
            fn(r0)

    for f in [pool.submit(job, r0) for r0 in starts]:
        f.result()


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
        _conv3x3_bands(x, wt, tables.biases[layer], post, conv, tag=str(layer))
        x = _pixel_shuffle(conv)
    return x


def v_int(tables: CodecTables, w_hat: np.ndarray) -> np.ndarray:
    """Integer log-scale v_int (M, 4h, 4w) as exact integers in float64 (tests, analysis)."""
    a = hidden_activations(tables, w_hat)
    out = np.empty((tables.latent_channels,) + a.shape[1:], np.float64)
    _conv3x3_bands(a, tables.weights[2], tables.biases[2], lambda acc: acc, out)
    return out


def threshold_index(thresholds: np.ndarray, v: np.ndarray) -> np.ndarray:
    """#{i : v >= T_i} for every element of v (float64 holding exact integers), as int64.

    Same result as np.searchsorted(T, v, side="right"), several times faster for many v:
    a guess from the mean threshold spacing, corrected by comparisons with the neighbouring
    thresholds (exact float64 compares); what is not settled after a few rounds (uneven
    thresholds) goes to searchsorted."""
    t = np.asarray(thresholds, np.float64)
    v = np.asarray(v, np.float64)
    n = t.size
    if n == 0:
        return np.zeros(v.shape, np.int64)
    if n == 1 or not (t[-1] > t[0]):
        return np.searchsorted(t, v, side="right")
    tp = np.concatenate([[-np.inf], t, [np.inf]])  # index g is right iff tp[g] <= v < tp[g + 1]
    step = (t[-1] - t[0]) / (n - 1)
    g = np.floor((v - t[0]) * (1.0 / step))
    np.clip(g + 1, 0, n, out=g)
    g = g.astype(np.int64)
    for _ in range(4):
        up = v >= tp[g + 1]
        down = v < tp[g]
        if not (up.any() or down.any()):
            return g
        g += up
        g -= down
    bad = (v >= tp[g + 1]) | (v < tp[g])
    if bad.any():
        g[bad] = np.searchsorted(t, v[bad], side="right")
    return g


def indices_from_v(tables: CodecTables, v: np.ndarray) -> np.ndarray:
    """Scale index = number of thresholds T_i with v >= T_i (0..S-1), uint8."""
    t = tables.thresholds.astype(np.float64)  # exact: |T| < 2**53
    return threshold_index(t, v).astype(np.uint8)


#: float32 unit roundoff (round to nearest)
_U32 = 2.0**-24


def _gamma32(k: int) -> float:
    """Higham's gamma_k = k u / (1 - k u) for float32: the relative error bound of a k-term
    dot product in any summation order."""
    return k * _U32 / (1.0 - k * _U32)


def _f32_layer_ok(tables: CodecTables) -> bool:
    """The float32 fast path needs float32-exact inputs: |W| and act_max at most 2**24."""
    w = tables.weights[2]
    return int(np.abs(w).max(initial=0)) <= 2**24 and int(tables.act_max[1]) <= 2**24


def _last_layer_indices_f32(tables: CodecTables, a: np.ndarray, out: np.ndarray) -> None:
    """Scale indices of the last layer, exactly, with float32 BLAS for the bulk.

    v = W a + b is computed with a float32 GEMM (inputs are exact float32 integers). For a
    dot product of K terms evaluated in any order (FMA or not, any blocking), the error is
    at most gamma_K * sum_i |W_i a_i| with gamma_K = K u / (1 - K u), u = 2**-24 (Higham,
    Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5), and
    sum_i |W_i a_i| <= ||W_o||_2 ||a_p||_2 (Cauchy-Schwarz). With B = 2 * gamma_{K+2} *
    ||W_o|| ||a_p|| (a factor 2 of margin for the norms' own rounding), the exact v lies in
    [v32 - B, v32 + B]; where no threshold falls in that interval the index is settled,
    elsewhere (~0.3 % of elements on real images) v is recomputed exactly in float64
    (products and partial sums below 2**53: CodecTables.accumulator_bounds). So the result
    is the exact integer computation's, on any BLAS that rounds float32 operations
    correctly (every IEEE BLAS; not one that computes sgemm in reduced precision).
    """
    from ._rangecoder import last_layer_post

    cin, h, w = a.shape
    wt = tables.weights[2]
    cout = wt.shape[0]
    k = cin * 9
    w32 = wt.reshape(cout, k).astype(np.float32)
    w64 = np.ascontiguousarray(wt.reshape(cout, k), dtype=np.float64)
    b64 = np.ascontiguousarray(tables.biases[2], dtype=np.float64)
    gamma = _gamma32(k + 2)
    wscale = np.sqrt((w64 * w64).sum(axis=1)) * (2.0 * gamma)
    t = np.ascontiguousarray(tables.thresholds, dtype=np.float64)
    xp = _work("xp32", (cin, h + 2, w + 2), np.float32)
    xp[:, 0] = 0
    xp[:, -1] = 0
    xp[:, :, 0] = 0
    xp[:, :, -1] = 0
    xp[:, 1:-1, 1:-1] = a
    # per-pixel sum of squares over channels, then its 3x3 box sum = ||im2col column||^2
    sq = np.zeros((h + 2, w + 2), np.float64)
    a64 = a.astype(np.float64)
    sq[1:-1, 1:-1] = np.einsum("chw,chw->hw", a64, a64)
    del a64
    rows = _band_rows(h, max(1, min(h, BAND_BYTES // max(1, k * w * 4))))

    def band(r0):
        r1 = min(h, r0 + rows)
        n = r1 - r0
        c = _work("cols32", (cin, 3, 3, n, w), np.float32)
        for kh in range(3):
            for kw in range(3):
                c[:, kh, kw] = xp[:, r0 + kh:r1 + kh, kw:kw + w]
        c2 = c.reshape(k, n * w)
        v = _work("v32", (cout, n * w), np.float32)
        np.matmul(w32, c2, out=v)
        box = np.zeros((n, w), np.float64)
        for kh in range(3):
            for kw in range(3):
                box += sq[r0 + kh:r1 + kh, kw:kw + w]
        colnorm = np.sqrt(box.reshape(n * w) * (1.0 + 1e-12))
        g = np.empty((cout, n * w), np.uint8)
        last_layer_post(v, b64, wscale, colnorm, t, g, xp, cin, h + 2, w + 2, r0, w64)
        out[:, r0:r1] = g.reshape(cout, n, w)

    _run_bands(h, rows, band)


_LOCAL = threading.local()

#: BLAS threads the integer net uses (the calling thread only): $ILC_ENTROPY_BLAS_THREADS,
#: default 1. OpenBLAS's worker threads spin-wait; on a busy machine (or beside another
#: busy runtime) two of them made the net 5x slower than one.
BLAS_THREADS_ENV = "ILC_ENTROPY_BLAS_THREADS"
_BLAS_SETTER: list = []


def _openblas_local_setter():
    """OpenBLAS's openblas_set_num_threads_local (>= 0.3.27; per calling thread, returns the
    previous value) from the library numpy loaded, or None (other BLAS, older OpenBLAS)."""
    if _BLAS_SETTER:
        return _BLAS_SETTER[0]
    fn = None
    try:
        import ctypes

        paths = []
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln})
        except OSError:
            pass
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
                fn = lib.openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int]
            break
    except Exception:  # noqa: BLE001 - an optimisation only
        fn = None
    _BLAS_SETTER.append(fn)
    return fn


class _blas_threads:
    """Context manager: the calling thread's OpenBLAS thread count (no-op elsewhere)."""

    def __init__(self, n: int | None = None):
        import os

        if n is None:
            try:
                n = int(os.environ.get(BLAS_THREADS_ENV, "1"))
            except ValueError:
                n = 1
        self.n = n
        self.prev = None

    def __enter__(self):
        fn = _openblas_local_setter() if self.n > 0 else None
        if fn is not None:
            self.prev = fn(self.n)
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            _openblas_local_setter()(self.prev)


def _work(name: str, shape: tuple, dtype) -> np.ndarray:
    """A per-thread scratch array reused between calls (fresh large arrays cost page faults
    that, on a busy machine, took longer than the GEMMs themselves). Contents are garbage."""
    cache = getattr(_LOCAL, "arrays", None)
    if cache is None:
        cache = _LOCAL.arrays = {}
    arr = cache.get(name)
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    size = math.prod(shape)  # not np.prod: this runs ~10 times per call, np.prod costs ~20 us
    if arr is None or arr.dtype != np.dtype(dtype) or arr.size < size or arr.size > 4 * size + 2**20:
        arr = cache[name] = np.empty(size, dtype)
    return arr[:size].reshape(shape)


def _has_c_post() -> bool:
    try:
        from ._rangecoder import last_layer_post  # noqa: F401
    except ImportError:
        return False
    return True


_C_KERNELS: list = []


def _has_c_kernels() -> bool:
    if not _C_KERNELS:
        try:
            from ._rangecoder import hidden_post, im2col, last_post  # noqa: F401
        except ImportError:
            _C_KERNELS.append(False)
        else:
            _C_KERNELS.append(True)
    return _C_KERNELS[0]


def _prepared(tables: CodecTables) -> dict:
    """The tables' weights in the layouts the C path uses, cached on the tables object (keyed
    by the identity of the arrays it was made from, which it keeps alive)."""
    src = tuple(tables.weights) + tuple(tables.biases) + (tables.thresholds, tables.shifts, tables.act_max)
    hit = tables.__dict__.get("_intnet_prepared")
    if hit is not None and len(hit[0]) == len(src) and all(a is b for a, b in zip(hit[0], src)):
        return hit[1]
    hidden = []
    for layer in range(2):
        wt = tables.weights[layer]
        hidden.append((np.ascontiguousarray(wt.reshape(wt.shape[0], -1), dtype=np.float64),
                       np.ascontiguousarray(tables.biases[layer], dtype=np.float64),
                       int(tables.shifts[layer]), int(tables.act_max[layer])))
    wt = tables.weights[2]
    cout, k = wt.shape[0], wt[0].size
    w64 = np.ascontiguousarray(wt.reshape(cout, k), dtype=np.float64)
    in_max = [tables.w_bound, int(tables.act_max[0])]
    # layer 1's input is an activation, in [0, act_max[0]]; layer 0's (w_hat) is signed
    wino = [_winograd_weights(tables.weights[layer], tables.biases[layer], in_max[layer], nonneg=layer > 0,
                              shift=int(tables.shifts[layer])) for layer in range(2)]
    gamma = _gamma32(k + 2)
    prep = {"hidden": hidden, "wino": wino, "f32_ok": _f32_layer_ok(tables),
            "wino_last": _winograd_last_weights(tables.weights[2], int(tables.act_max[1])), "w32": np.ascontiguousarray(wt.reshape(cout, k), dtype=np.float32), "w64": w64,
            "b64": np.ascontiguousarray(tables.biases[2], dtype=np.float64),
            # relative margin 2**-20 for the float64 rounding of the norms (< 2**-40)
            "wscale": np.sqrt((w64 * w64).sum(axis=1)) * (gamma * (1.0 + 2.0**-20)),
            "thresholds": np.ascontiguousarray(tables.thresholds, dtype=np.float64)}
    tables.__dict__["_intnet_prepared"] = (src, prep)
    return prep


#: 2G and B^T of Winograd F(2x2, 3x3) (see wino_in / wino_post in _rangecoder.c)
_WG2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.int64)
_WBT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.int64)


def _winograd_filter(w: np.ndarray) -> np.ndarray:
    """U_ij[o, c] = ((2G) W[o, c] (2G)^T)_ij as int64 (16, cout, cin): 4x the usual transformed
    filter, integers (exact for |W| < 2**31: |U| <= 9 * 2**31)."""
    cout, cin = w.shape[:2]
    return np.einsum("ik,ockl,jl->ijoc", _WG2, w.astype(np.int64), _WG2).reshape(16, cout, cin)


#: $ILC_INTNET_WINOGRAD=0 turns the Winograd hidden layers off (the im2col GEMM runs instead)
WINOGRAD_ENV = "ILC_INTNET_WINOGRAD"


def _winograd_weights(weight: np.ndarray, bias: np.ndarray, in_max: int, nonneg: bool = False, shift: int = 0):
    """(U float64 (16, cout, cin), bias int64, fast) for a hidden layer's Winograd F(2x2, 3x3)
    path, or None where it would not be exact.

    U_ij[o, c] = ((2G) W[o, c] (2G)^T)_ij (integers; 4x the usual transformed filter). Each
    entry of V = B^T d B is a sum of 4 input values with signs +-1, so |V| <= 4 in_max, and
    every partial sum of the GEMM over channels (any order) is an integer of magnitude at most
    4 in_max max_o sum_c |U_ij[o, c]|: exact in float64 when that is below 2**53 (checked
    here in Python integers). The output transform (sums of 9 such values), the division by 4
    and the bias run in int64 (wino_post), so every activation equals the direct path's."""
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[2:] != (3, 3) or w.shape[0] % 4 or np.abs(w.astype(np.int64)).max(initial=0) >= 2**31:
        return None
    b = np.asarray(bias).astype(np.int64)
    if np.abs(b).max(initial=0) >= 2**53:
        return None
    u = _winograd_filter(w)
    cout, cin = w.shape[:2]
    if cin > 2**20:
        return None
    fast = 0 <= shift <= 60
    for ij in range(16):
        row = int(np.abs(u[ij]).sum(axis=1).max(initial=0))  # < 48 * 9 * 2**31 per 1000 channels: no overflow
        if 4 * int(in_max) * row >= 2**53:
            return None
        # fast (wino_post's vectorised loop) needs |m| < 2**51; with inputs in [0, in_max],
        # |V_ij| <= in_max * max(sum of the positive, sum of the negative coefficients of V_ij)
        coef = np.outer(_WBT[ij // 4], _WBT[ij % 4])
        vm = int(in_max) * (max(int(coef[coef > 0].sum()), int(-coef[coef < 0].sum())) if nonneg else int(np.abs(coef).sum()))
        fast = fast and vm * row < 2**51
    return np.ascontiguousarray(u, dtype=np.float64), np.ascontiguousarray(b), fast


def _winograd_last_weights(weight: np.ndarray, in_max: int):
    """(U float32 (16, cout, cin), wscale float64 (cout)) for the last layer's float32
    Winograd F(2x2, 3x3) path, or None where its inputs would not be exact in float32.

    U = (2G) W (2G)^T as in _winograd_weights, rounded to float32 (|U - U32| <= u |U|,
    u = 2**-24); V = B^T d B of inputs in [0, in_max] is exact in float32 while
    4 in_max < 2**24. Each m_ij = U32_ij V_ij of the float32 GEMM (K = cin terms, any order,
    FMA or not) is within gamma_{cin+2} sum_c |U32| |V| (Higham eq. 3.5) of U32_ij . V_ij,
    which is within u sum_c |U| |V| of the exact value; by Cauchy-Schwarz both sums are at
    most (1 + u) ||U_ij[o]|| ||V_ij[:, t]||. An output v = y4 / 4 sums nine such m with signs
    +-1 in float64 (error below 8 * 2**-53 of the same products) and is rounded to float32
    (relative u of |y4| / 4), so |v - exact| <= wscale_o * cn_p with wscale_o =
    (gamma + 3 u) (1 + 2**-20) max_ij ||U_ij[o]|| / 4 and cn_p the sum of the nine
    ||V_ij[:, t]|| (wino_last_out); the 2**-20 covers the products of small terms and the
    float64 rounding of the norms. last_post settles the index with that bound exactly as
    for the direct GEMM, and recomputes what it cannot settle exactly."""
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[2:] != (3, 3) or 4 * int(in_max) >= 2**24 or np.abs(w.astype(np.int64)).max(initial=0) >= 2**31:
        return None
    u = _winograd_filter(w)
    cin = w.shape[1]
    gamma = _gamma32(cin + 2)
    norms = np.sqrt((u.astype(np.float64) ** 2).sum(axis=2)).max(axis=0)  # max over ij, per o
    wscale = norms * ((gamma + 3 * _U32) * (1.0 + 2.0**-20) / 4.0)
    return np.ascontiguousarray(u, dtype=np.float32), np.ascontiguousarray(wscale)


def _zero_border(xp: np.ndarray) -> np.ndarray:
    xp[:, 0] = 0
    xp[:, -1] = 0
    xp[:, :, 0] = 0
    xp[:, :, -1] = 0
    return xp


def _scale_indices_c(tables: CodecTables, w_hat: np.ndarray) -> np.ndarray:
    """scale_indices with the C kernels: no pass in numpy but the GEMMs.

    Layers 0, 1: im2col (float32 -> float64) and a float64 GEMM per band, then one pass
    (hidden_post) adds the bias, shifts, floors, clips and pixel-shuffles straight into the
    next layer's zero-padded float32 input. Last layer: im2col (float32), a float32 GEMM and
    last_post (error bound, exact float64 recomputation where needed, threshold index),
    as in _last_layer_indices_f32. Same integers as the float64 path, in any band split."""
    from . import _rangecoder as rc

    prep = _prepared(tables)
    xp = _hidden_c(tables, w_hat, prep)
    cin, h, w = xp.shape[0], xp.shape[1] - 2, xp.shape[2] - 2
    w32 = prep["w32"]
    cout, kk = w32.shape
    out = np.empty((cout, h, w), np.uint8)
    wl = prep["wino_last"]
    if wl is not None and 2 in WINOGRAD_LAYERS and _winograd_on() and hasattr(rc, "wino_last_out"):
        _wino_last_layer(rc, xp, out, wl, prep, h, w)
        return out
    rows = _band_rows(h, max(1, min(h, BAND_BYTES // max(1, kk * w * 4))))

    def last(r0):
        n = min(h, r0 + rows) - r0
        cols = _work("c32", (kk, n * w), np.float32)
        rc.im2col(xp, cin, h + 2, w + 2, r0, n, cols)
        v = _work("v32", (cout, n * w), np.float32)
        np.matmul(w32, cols, out=v)
        rc.last_post(v, prep["b64"], prep["wscale"], prep["thresholds"], out, xp, cin, h + 2, w + 2, r0, prep["w64"])

    _run_bands(h, rows, last)
    return out


def _hidden_c(tables: CodecTables, w_hat: np.ndarray, prep: dict | None = None) -> np.ndarray:
    """The last hidden activation, zero-padded by 1 on each side: (Nh, 4h + 2, 4w + 2) float32
    holding exact integers (a per-thread scratch array: valid until the next call)."""
    from . import _rangecoder as rc

    prep = prep or _prepared(tables)
    nh, h, w = w_hat.shape
    xp = _zero_border(_work("xq0", (nh, h + 2, w + 2), np.float32))
    xp[:, 1:-1, 1:-1] = w_hat  # exact: |w_hat| <= 2**20
    use_wino = _winograd_on() and hasattr(rc, "wino_in")
    for layer, (w64, b64, k, amax) in enumerate(prep["hidden"]):
        cin, cout = xp.shape[0], w64.shape[0]
        nxt = _zero_border(_work(f"xq{layer + 1}", (cout // 4, 2 * h + 2, 2 * w + 2), np.float32))
        wino = prep["wino"][layer] if use_wino and layer in WINOGRAD_LAYERS else None
        if wino is not None:
            _wino_layer(rc, xp, nxt, wino, k, amax, h, w)
            xp, h, w = nxt, 2 * h, 2 * w
            continue
        rows = _band_rows(h, max(1, min(h, BAND_BYTES // max(1, cin * 9 * w * 8))))

        def band(r0, xp=xp, nxt=nxt, cin=cin, cout=cout, h=h, w=w, rows=rows, w64=w64, b64=b64, k=k, amax=amax):
            n = min(h, r0 + rows) - r0
            cols = _work("c64", (cin * 9, n * w), np.float64)
            rc.im2col(xp, cin, h + 2, w + 2, r0, n, cols)
            acc = _work("a64", (cout, n * w), np.float64)
            np.matmul(w64, cols, out=acc)
            rc.hidden_post(acc, b64, k, amax, nxt, r0, n, w)

        _run_bands(h, rows, band)
        xp, h, w = nxt, 2 * h, 2 * w
    return xp


#: layers run as Winograd F(2x2, 3x3) where exact (layer 0's GEMMs are too small to gain);
#: layer 1 in exact float64, the last layer (2) in float32 with an error bound
WINOGRAD_LAYERS = (1, 2)


def _winograd_on() -> bool:
    import os

    return os.environ.get(WINOGRAD_ENV, "1") != "0"


def _wino_bands(rc, xp, u, h, w, finish, norms: bool = False) -> None:
    """Winograd F(2x2, 3x3) input transform and the 16 GEMMs over channels (u: (16, cout, cin),
    float64 or float32) in cache-sized bands of tile rows; finish(m, norms, t0, nt) takes each
    band's products (and, with norms, the column norms of the transformed input)."""
    cout, cin = u.shape[1], u.shape[2]
    th, tw = (h + 1) // 2, (w + 1) // 2
    per_row = 16 * (cin + cout) * tw * u.itemsize
    rows = _band_rows(th, max(1, min(th, min(BAND_BYTES, CACHE_BAND_BYTES) // max(1, per_row))))
    tag = "w" + u.dtype.char

    def band(t0):
        nt = min(th, t0 + rows) - t0
        v = _work(tag + "v", (16, cin, nt * tw), u.dtype)
        nrm = _work(tag + "n", (16, nt * tw), np.float64) if norms else None
        rc.wino_in(xp, cin, h + 2, w + 2, t0, nt, v, nrm)
        m = _work(tag + "m", (16, cout, nt * tw), u.dtype)
        np.matmul(u, v, out=m)
        finish(m, nrm, t0, nt)

    _run_bands(th, rows, band)


def _wino_last_layer(rc, xp, out, wl, prep, h, w) -> None:
    """The last layer by float32 Winograd F(2x2, 3x3) (2.25x fewer multiplications than the
    im2col GEMM), then last_post with the bound of _winograd_last_weights: the same indices."""
    u32, wscale = wl
    cout, cin = u32.shape[1], u32.shape[2]

    def finish(m, norms, t0, nt):
        r0 = 2 * t0
        nr = min(h, 2 * (t0 + nt)) - r0
        vv = _work("v32", (cout, nr * w), np.float32)
        cn = _work("lcn", (nr * w,), np.float64)
        rc.wino_last_out(m, norms, t0, nt, h, w, vv, cn)
        rc.last_post(vv, prep["b64"], wscale, prep["thresholds"], out, xp, cin, h + 2, w + 2, r0, prep["w64"], cn)

    _wino_bands(rc, xp, u32, h, w, finish, norms=True)


def _wino_layer(rc, xp, nxt, wino, k, amax, h, w) -> None:
    """One hidden layer by Winograd F(2x2, 3x3): nxt's interior = pixel-shuffled activations."""
    u, b, fast = wino
    _wino_bands(rc, xp, u, h, w, lambda m, _norms, t0, nt: rc.wino_post(m, b, k, amax, nxt, t0, nt, h, w, fast))


def scale_indices(tables: CodecTables, w_hat: np.ndarray, exact_f64: bool | None = None) -> np.ndarray:
    """Scale index (uint8, shape (M, 4h, 4w)) of every y element, bit-exact everywhere.

    exact_f64: compute the last layer entirely in float64 (the slow reference path; default:
    $ILC_INTNET_F64 == "1"). Otherwise the last layer uses float32 BLAS with an error
    bound and exact recomputation (same result; see _last_layer_indices_f32)."""
    if tables.num_scales > 256:
        raise ValueError("more than 256 scales do not fit uint8 indices")
    with _blas_threads():
        return _scale_indices(tables, w_hat, exact_f64)


def _scale_indices(tables: CodecTables, w_hat: np.ndarray, exact_f64: bool | None) -> np.ndarray:
    if exact_f64 is None:
        import os

        exact_f64 = os.environ.get("ILC_INTNET_F64", "") == "1"
    if not exact_f64 and tables.num_scales < 256 and _has_c_kernels() and _prepared(tables)["f32_ok"]:
        w_hat = _check_w_hat(tables, w_hat)
        if w_hat.size:
            return _scale_indices_c(tables, w_hat)
    a = hidden_activations(tables, w_hat)
    out = np.empty((tables.latent_channels,) + a.shape[1:], np.uint8)
    if not exact_f64 and _f32_layer_ok(tables) and _has_c_post():
        _last_layer_indices_f32(tables, a, out)
        return out
    t = tables.thresholds.astype(np.float64)
    _conv3x3_bands(a, tables.weights[2], tables.biases[2],
                   lambda acc: threshold_index(t, acc).astype(np.uint8), out)
    return out


def log_scale_of_v(tables: CodecTables, v: np.ndarray) -> np.ndarray:
    """Approximate float log(sigma) of v_int (analysis only; never used to pick a CDF)."""
    return np.asarray(v, np.float64) * 2.0**-tables.log2_scale
