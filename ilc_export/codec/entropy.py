"""Entropy coding of w_hat and y symbols with a range coder (numpy + a coder backend).

Two implementations of one coder, byte for byte (tests/test_codec_conformance.py):
- "c": ilc_export/codec/_rangecoder.c, a C extension built at install time (optional);
  whole streams per call with the GIL released. It is the only one on Linux aarch64
  (Jetson), where constriction publishes no wheel.
- "constriction": the PyPI package (x86_64 / macOS wheels).
Choose with ``EntropyCodec(tables, coder=...)`` or $ILC_ENTROPY_CODER (c | constriction |
auto); auto takes the C extension where it is built (it is faster), else constriction.

Streams (each a sequence of little-endian uint32 words from constriction's
``stream.queue.RangeEncoder``: 64-bit state, 32-bit words; models are ``Categorical``
built from the integer CDF tables with ``perfect=False``, i.e. the leaky 24-bit
quantisation of the pmf, a deterministic function of our integer tables; docs/bitstream.md
section 3 spells out the arithmetic):

stream 0 (hyper):  for c in 0..Nh-1: the h*w values w_hat[c] - lo[c] (raster order),
                   model = prior CDF row c; then END_MARKER (Uniform(2**16)).
stream 1 (latent): the scale index of every y element comes from the integer
                   hyper-scale net on w_hat (intnet.scale_indices). Elements are grouped
                   by index k = 0..S-1 (raster order within a group); a group is coded
                   with Gaussian CDF row k over the symbols
                   0 = escape below, 1 + R_k + s for |s| <= R_k, 2 R_k + 2 = escape above.
                   Then the escapes, in coding order (by k, raster order within a group),
                   e = |s| - R_k - 1 >= 0, u = e + 1:
                   nb = floor(log2 u) for every escape (Uniform(32)); then for nb = 1..31
                   the low nb bits of u of the escapes with that nb (Uniform(2**nb),
                   split into a 16-bit low part and a high part when nb > 16).
                   Then END_MARKER.

A decoder that reads anything inconsistent raises BitstreamError (never crashes).
"""
from __future__ import annotations

import numpy as np

from ..contract.geometry import HYPER_DOWNSAMPLE
from . import intnet
from .intnet import _work
from .errors import BitstreamError
from .tables import CodecTables

#: Largest |y symbol| the format can carry (escape code limit).
MAX_ABS_SYMBOL = 2**30
#: 16-bit marker closing every stream; catches desynchronised or corrupted streams.
END_MARKER = 0xC0DE
_NB_ALPHABET = 32

_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)

#: Environment variable choosing the coder implementation: "c", "constriction" or "auto".
CODER_ENV = "ILC_ENTROPY_CODER"
#: Implementations, in the order "auto" tries them (both write identical bytes).
CODERS = ("c", "constriction")


def _cs():
    import constriction

    return constriction.stream


def _c_module():
    from . import _rangecoder

    _rangecoder.set_error_class(BitstreamError)  # corrupted streams raise BitstreamError
    return _rangecoder


_PROBES = {"c": _c_module, "constriction": _cs}


def _importable(name: str) -> bool:
    try:
        _PROBES[name]()
    except ImportError:
        return False
    return True


def available_coders() -> list[str]:
    """Coder implementations importable here ("c": the built-in C extension,
    "constriction": the PyPI package), in the order "auto" prefers them."""
    return [name for name in CODERS if _importable(name)]


def resolve_coder(coder: str | None = None) -> str:
    """The implementation to use: `coder`, else $ILC_ENTROPY_CODER, else "auto" (the C
    extension where it is built, it is the faster one; else constriction). Only the
    implementations it needs are imported (constriction is not, where the C coder is built)."""
    import os

    want = (coder or os.environ.get(CODER_ENV) or "auto").strip().lower()
    if want not in CODERS + ("auto",):
        raise ValueError(f"unknown entropy coder {want!r}; choose one of {', '.join(CODERS)} or auto")
    if want == "auto":
        for name in CODERS:
            if _importable(name):
                return name
        raise ImportError("no entropy coder available: the C extension ilc_export.codec._rangecoder is not built "
                          "and constriction is not installed (reinstall with a C compiler: pip install -e ., "
                          "or python setup.py build_ext --inplace)")
    if not _importable(want):
        hint = ("build it with `pip install -e .` or `python setup.py build_ext --inplace` (needs a C compiler)"
                if want == "c" else "pip install constriction (x86_64 and macOS wheels only)")
        raise ImportError(f"entropy coder {want!r} is not available here: {hint}")
    return want


def _to_bytes(words: np.ndarray) -> bytes:
    return np.asarray(words, dtype="<u4").tobytes()


def _from_bytes(data: bytes, what: str) -> np.ndarray:
    _check_stream(data, what)
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def _check_stream(data: bytes, what: str) -> None:
    if len(data) % 4:
        raise BitstreamError(f"{what} stream has {len(data)} bytes, not a multiple of 4")
    if not data:
        raise BitstreamError(f"{what} stream is empty")


def quantized_cdf(pmf) -> np.ndarray:
    """constriction's ``Categorical(pmf, perfect=False)`` fixed-point CDF (24 bit, uint32,
    len(pmf) + 1 entries), computed by the C extension (the model both coders use)."""
    p = np.ascontiguousarray(pmf, dtype=np.float64)
    return np.frombuffer(_c_module().quantize_cdf(p), dtype=np.uint32).copy()


class _CTables:
    """The C coder's view of a list of pmfs: 24-bit CDFs (one row per model) + lookup."""

    def __init__(self, pmfs: list[np.ndarray]):
        rc = _c_module()
        self.stride = max(len(p) for p in pmfs) + 2
        self.cdf = np.full((len(pmfs), self.stride), 1 << rc.PRECISION, np.uint32)
        self.size = np.array([len(p) for p in pmfs], np.int32)
        for k, p in enumerate(pmfs):
            self.cdf[k, : len(p) + 1] = quantized_cdf(np.asarray(p, np.float64))
        self.lut = rc.build_lut(self.cdf, self.size, self.stride)  # bytes: uint16 per entry


class _CCoder:
    """Streams with the C extension: whole streams per call, the GIL released."""

    name = "c"

    def __init__(self, tables: CodecTables):
        self._rc = _c_module()
        self.tables = tables
        self.prior = _CTables([tables.prior_pmf(c) for c in range(tables.hyper_channels)])
        self.gauss = _CTables([tables.gauss_pmf(k) for k in range(tables.num_scales)])
        self.lo = np.ascontiguousarray(tables.prior_lo, dtype=np.int32)
        self.radius = np.ascontiguousarray(tables.gauss_radius, dtype=np.int32)

    def encode_w(self, w_hat: np.ndarray) -> bytes:
        nh = w_hat.shape[0]
        w = np.ascontiguousarray(w_hat, dtype=np.int32)
        p = self.prior
        return self._rc.encode_w(w, w[0].size if nh else 0, self.lo, p.cdf, p.size, p.lut, p.stride)

    def decode_w(self, data: bytes, w_shape) -> np.ndarray:
        _check_stream(data, "hyper")
        out = np.empty(w_shape, np.int32)
        p = self.prior
        self._rc.decode_w(data, out, int(w_shape[1] * w_shape[2]), self.lo, p.cdf, p.size, p.lut, p.stride)
        return out

    def encode_y(self, y_sym: np.ndarray, indices: np.ndarray) -> bytes:
        g = self.gauss
        y = np.ascontiguousarray(y_sym, dtype=np.int32)
        return self._rc.encode_y(y, np.ascontiguousarray(indices, dtype=np.uint8), self.radius, g.cdf, g.size, g.lut,
                                 g.stride, _work("coder", y.size, np.int32))

    def decode_y(self, data: bytes, indices: np.ndarray) -> np.ndarray:
        _check_stream(data, "latent")
        out = np.empty(indices.shape, np.int32)
        g = self.gauss
        self._rc.decode_y(data, out, np.ascontiguousarray(indices, dtype=np.uint8), self.radius, g.cdf, g.size, g.lut,
                          g.stride, _work("coder", out.size, np.int32))
        return out


class _ConstrictionCoder:
    """Streams with constriction's queue coder (the original implementation)."""

    name = "constriction"

    def __init__(self, tables: CodecTables):
        cs = _cs()
        self.tables = tables
        self._Categorical = cs.model.Categorical
        self._Uniform = cs.model.Uniform
        self._queue = cs.queue
        self.prior_models = [self._categorical(tables.prior_pmf(c)) for c in range(tables.hyper_channels)]
        self.gauss_models = [self._categorical(tables.gauss_pmf(k)) for k in range(tables.num_scales)]
        self.radius = tables.gauss_radius.astype(np.int64)
        self._uniform = {}

    def _categorical(self, pmf: np.ndarray):
        return self._Categorical(pmf.astype(np.float64), perfect=False)

    def _uni(self, n: int):
        assert 2 <= n <= 2**16
        m = self._uniform.get(n)
        if m is None:
            m = self._uniform[n] = self._Uniform(n)
        return m


    # hyper stream ---------------------------------------------------------------
    def encode_w(self, w_hat: np.ndarray) -> bytes:
        t = self.tables
        enc = self._queue.RangeEncoder()
        for c in range(t.hyper_channels):
            s = w_hat[c].ravel().astype(np.int64) - int(t.prior_lo[c])
            if s.size:
                if s.min() < 0 or s.max() >= t.prior_len[c]:
                    raise ValueError(f"w_hat channel {c} outside the prior support; use quantize_w")
                enc.encode(s.astype(np.int32), self.prior_models[c])
        enc.encode(np.array([END_MARKER], np.int32), self._uni(2**16))
        return _to_bytes(enc.get_compressed())

    def decode_w(self, data: bytes, w_shape) -> np.ndarray:
        t = self.tables
        nh, h, w = w_shape
        out = np.empty((nh, h, w), np.int32)
        dec = self._queue.RangeDecoder(_from_bytes(data, "hyper"))
        try:
            for c in range(nh):
                if h * w:
                    out[c] = (dec.decode(self.prior_models[c], h * w) + int(t.prior_lo[c])).reshape(h, w)
            marker = int(dec.decode(self._uni(2**16)))
        except _FATAL:
            raise
        except BaseException as e:  # noqa: BLE001 - constriction raises AssertionError/PanicException
            raise BitstreamError(f"hyper stream is corrupted ({type(e).__name__})") from None
        if marker != END_MARKER:
            raise BitstreamError("hyper stream is corrupted (end marker mismatch)")
        return out

    # latent stream --------------------------------------------------------------
    def encode_y(self, y_sym: np.ndarray, indices: np.ndarray) -> bytes:
        order, counts = _groups(indices, self.tables.num_scales)
        ys = y_sym.ravel()[order].astype(np.int32, copy=False)
        enc = self._queue.RangeEncoder()
        escapes = []
        off = 0
        for k, n in enumerate(counts):
            if not n:
                continue
            seg = ys[off:off + n]
            off += n
            r = int(self.radius[k])
            out = (seg < -r) | (seg > r)
            if out.any():
                e = np.abs(seg[out].astype(np.int64)) - (r + 1)
                escapes.append(e)
                t = np.clip(seg, -r - 1, r + 1)
                t += r + 1
            else:
                t = seg + (r + 1)
            enc.encode(t.astype(np.int32, copy=False), self.gauss_models[k])
        if escapes:
            self._encode_escapes(enc, np.concatenate(escapes))
        enc.encode(np.array([END_MARKER], np.int32), self._uni(2**16))
        return _to_bytes(enc.get_compressed())

    def _encode_escapes(self, enc, e: np.ndarray) -> None:
        if not e.size:
            return
        u = e.astype(np.int64) + 1
        nb = np.floor(np.log2(u.astype(np.float64))).astype(np.int64)
        nb += (u >> nb) >= 2  # exact floor(log2) despite float rounding
        nb -= (u >> nb) < 1
        enc.encode(nb.astype(np.int32), self._uni(_NB_ALPHABET))
        for b in range(1, _NB_ALPHABET):
            rem = u[nb == b] - (1 << b)
            if not rem.size:
                continue
            if b <= 16:
                enc.encode(rem.astype(np.int32), self._uni(1 << b))
            else:
                enc.encode((rem & 0xFFFF).astype(np.int32), self._uni(1 << 16))
                enc.encode((rem >> 16).astype(np.int32), self._uni(1 << (b - 16)))

    def decode_y(self, data: bytes, indices: np.ndarray) -> np.ndarray:
        order, counts = _groups(indices, self.tables.num_scales)
        dec = self._queue.RangeDecoder(_from_bytes(data, "latent"))
        ys = np.empty(order.size, np.int32)
        esc_pos = []
        try:
            off = 0
            for k, n in enumerate(counts):
                if not n:
                    continue
                seg = ys[off:off + n]
                seg[:] = dec.decode(self.gauss_models[k], int(n))
                r = int(self.radius[k])
                seg -= r + 1
                out = (seg < -r) | (seg > r)
                if out.any():
                    esc_pos.append(np.flatnonzero(out) + off)
                off += n
            if esc_pos:
                pos = np.concatenate(esc_pos)
                e = self._decode_escapes(dec, pos.size)
                r = self.radius[np.searchsorted(np.cumsum(counts), pos, side="right")]
                mag = e + r + 1
                if mag.max() > MAX_ABS_SYMBOL:
                    raise BitstreamError(f"latent stream is corrupted (escaped value above {MAX_ABS_SYMBOL})")
                ys[pos] = np.where(ys[pos] < 0, -mag, mag)
            marker = int(dec.decode(self._uni(2**16)))
        except (_FATAL + (BitstreamError,)):
            raise
        except BaseException as e:  # noqa: BLE001 - constriction raises AssertionError/PanicException
            raise BitstreamError(f"latent stream is corrupted ({type(e).__name__})") from None
        if marker != END_MARKER:
            raise BitstreamError("latent stream is corrupted (end marker mismatch)")
        out = np.empty(order.size, np.int32)
        out[order] = ys
        return out.reshape(indices.shape)

    def _decode_escapes(self, dec, n: int) -> np.ndarray:
        nb = dec.decode(self._uni(_NB_ALPHABET), n).astype(np.int64)
        u = np.ones(n, np.int64) << nb
        for b in range(1, _NB_ALPHABET):
            sel = nb == b
            m = int(sel.sum())
            if not m:
                continue
            if b <= 16:
                rem = dec.decode(self._uni(1 << b), m).astype(np.int64)
            else:
                low = dec.decode(self._uni(1 << 16), m).astype(np.int64)
                rem = low | (dec.decode(self._uni(1 << (b - 16)), m).astype(np.int64) << 16)
            u[sel] += rem
        return u - 1


def _groups(indices: np.ndarray, num_scales: int):
    """Raster positions sorted by scale index (stable) and the group sizes."""
    idx = np.asarray(indices).ravel().astype(np.uint8, copy=False)
    order = np.argsort(idx, kind="stable")
    counts = np.bincount(idx, minlength=num_scales)
    return order, counts


_IMPLS = {"c": _CCoder, "constriction": _ConstrictionCoder}


class EntropyCodec:
    """Encodes/decodes (w_hat, y symbols) with the integer tables of one model.

    coder: "c" (the C extension), "constriction", or None/"auto" ($ILC_ENTROPY_CODER, else
    the C extension where built, else constriction). Every implementation writes the same
    bytes and reads the same streams (tests/test_codec_conformance.py)."""

    def __init__(self, tables: CodecTables, coder: str | None = None):
        self.tables = tables
        self.coder_name = resolve_coder(coder)
        self.coder = _IMPLS[self.coder_name](tables)
        self.radius = tables.gauss_radius.astype(np.int64)
        # -log2 p of every (scale, table symbol) for rate estimates
        width = int(2 * self.radius.max() + 3)
        lp = np.full((tables.num_scales, width), np.inf)
        for k in range(tables.num_scales):
            p = tables.gauss_pmf(k)
            lp[k, : len(p)] = tables.precision - np.log2(p)
        self._gauss_bits = lp
        # fewest bits any symbol can cost (most probable symbol of the most peaked table):
        # a stream shorter than n_symbols * this cannot be genuine (checked before decoding,
        # so a tiny file claiming a huge image is refused before anything big is allocated)
        self.min_bits_y = float(min(tables.precision - np.log2(tables.gauss_pmf(k).max()) for k in range(tables.num_scales)))
        self.min_bits_w = float(min(tables.precision - np.log2(tables.prior_pmf(c).max()) for c in range(tables.hyper_channels)))

    # quantisation helpers ------------------------------------------------------
    def quantize_w(self, w: np.ndarray) -> np.ndarray:
        """round(w) clamped to each channel's prior support: the w_hat every later
        stage (hyper_mean, integer scale net, entropy coder) must use. w: (Nh, h, w)."""
        w = np.asarray(w)
        if w.ndim != 3 or w.shape[0] != self.tables.hyper_channels:
            raise ValueError(f"w must have shape ({self.tables.hyper_channels}, h, w), got {w.shape}")
        lo = self.tables.prior_lo.astype(np.float64)[:, None, None]
        hi = lo + self.tables.prior_len[:, None, None] - 1
        r = np.round(np.nan_to_num(w.astype(np.float64), nan=0.0))
        return np.clip(r, lo, hi).astype(np.int32)

    @staticmethod
    def quantize_y(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """Symbols round(y - mu) as int32 (clamped to +-MAX_ABS_SYMBOL, NaN -> 0)."""
        r = np.round(np.nan_to_num(np.asarray(y, np.float64) - np.asarray(mu, np.float64), nan=0.0))
        return np.clip(r, -MAX_ABS_SYMBOL, MAX_ABS_SYMBOL).astype(np.int32)

    def scale_indices(self, w_hat: np.ndarray) -> np.ndarray:
        return intnet.scale_indices(self.tables, w_hat)

    def y_shape_of(self, w_shape) -> tuple[int, int, int]:
        _, h, w = w_shape
        return (self.tables.latent_channels, HYPER_DOWNSAMPLE * h, HYPER_DOWNSAMPLE * w)

    # encode --------------------------------------------------------------------
    def encode(self, w_hat: np.ndarray, y_sym: np.ndarray, indices: np.ndarray | None = None) -> list[bytes]:
        """-> [hyper stream, latent stream]. indices: precomputed scale_indices(w_hat)."""
        w_hat = np.asarray(w_hat)
        if indices is None:
            indices = self.scale_indices(w_hat)  # validates w_hat
            return [self.encode_w(w_hat), self.encode_y(y_sym, indices, _trusted=True)]
        return [self.encode_w(w_hat), self.encode_y(y_sym, indices)]

    def encode_w(self, w_hat: np.ndarray) -> bytes:
        t = self.tables
        w_hat = np.asarray(w_hat)
        if w_hat.ndim != 3 or w_hat.shape[0] != t.hyper_channels or w_hat.dtype.kind not in "iu":
            raise ValueError(f"w_hat must be integers of shape ({t.hyper_channels}, h, w), got {w_hat.dtype} {w_hat.shape}")
        if w_hat.size:
            lo = t.prior_lo.astype(np.int64)
            flat = w_hat.reshape(w_hat.shape[0], -1)
            bad = (flat.min(axis=1) < lo) | (flat.max(axis=1) >= lo + t.prior_len)
            if bad.any():
                raise ValueError(f"w_hat channel {int(np.flatnonzero(bad)[0])} outside the prior support; use quantize_w")
        return self.coder.encode_w(w_hat)

    def _table_symbols(self, y_sym: np.ndarray, indices: np.ndarray):
        idx = indices.ravel()
        s = y_sym.ravel().astype(np.int64)
        r = self.radius[idx]
        t = np.clip(s, -r - 1, r + 1) + r + 1
        esc = (s < -r) | (s > r)
        e = np.abs(s[esc]) - r[esc] - 1
        return idx, t, e

    def encode_y(self, y_sym: np.ndarray, indices: np.ndarray, _trusted: bool = False) -> bytes:
        """_trusted: indices come from scale_indices (uint8, every value < num_scales)."""
        y_sym = np.asarray(y_sym)
        indices = np.asarray(indices)
        if y_sym.shape != indices.shape:
            raise ValueError(f"y symbols {y_sym.shape} and scale indices {indices.shape} differ in shape")
        if y_sym.dtype.kind not in "iu":
            raise ValueError(f"y symbols must be integers, got {y_sym.dtype}; use quantize_y")
        # the C coder checks |y| <= MAX_ABS_SYMBOL itself (same message) for int32 input, which
        # it reads as is; other dtypes are narrowed to int32 first, so they are checked here
        if y_sym.size and not (self.coder_name == "c" and y_sym.dtype == np.int32) and \
                (y_sym.min() < -MAX_ABS_SYMBOL or y_sym.max() > MAX_ABS_SYMBOL):
            raise ValueError(f"|y symbol| above {MAX_ABS_SYMBOL} cannot be coded")
        return self.coder.encode_y(y_sym, indices if _trusted else self._check_indices(indices))

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.dtype == np.uint8 and self.coder_name == "c":
            return idx  # the C coder refuses an index >= num_scales itself ("scale index out of range")
        if idx.dtype != np.uint8 or self.tables.num_scales < 256:
            if idx.size and (idx.min() < 0 or idx.max() >= self.tables.num_scales):
                raise ValueError("scale index out of range")
            idx = idx.astype(np.uint8, copy=False)
        return idx

    # decode --------------------------------------------------------------------
    def decode(self, streams: list[bytes], w_shape, y_shape) -> tuple[np.ndarray, np.ndarray]:
        """-> (w_hat int32 (Nh,h,w), y symbols int32 (M,4h,4w)); BitstreamError on bad data."""
        if len(streams) != 2:
            raise BitstreamError(f"expected 2 entropy-coded streams, found {len(streams)}")
        w_shape = tuple(int(x) for x in w_shape)
        y_shape = tuple(int(x) for x in y_shape)
        if len(w_shape) != 3 or w_shape[0] != self.tables.hyper_channels:
            raise BitstreamError(f"hyper-latent shape {w_shape} does not match the model ({self.tables.hyper_channels} channels)")
        if y_shape != self.y_shape_of(w_shape):
            raise BitstreamError(f"latent shape {y_shape} does not match hyper-latent shape {w_shape}")
        for name, data, n, b in (("hyper", streams[0], int(np.prod(w_shape)), self.min_bits_w),
                                 ("latent", streams[1], int(np.prod(y_shape)), self.min_bits_y)):
            if 8 * len(data) + 256 < 0.99 * n * b:  # slack: coder rounding, final words
                raise BitstreamError(f"{name} stream of {len(data)} bytes is too short for {n} symbols "
                                     "(truncated file or wrong image size)")
        w_hat = self.decode_w(streams[0], w_shape)
        indices = self.scale_indices(w_hat)
        return w_hat, self.coder.decode_y(streams[1], indices)  # indices < num_scales by construction

    def decode_w(self, data: bytes, w_shape) -> np.ndarray:
        return self.coder.decode_w(data, tuple(int(x) for x in w_shape))

    def decode_y(self, data: bytes, indices: np.ndarray) -> np.ndarray:
        return self.coder.decode_y(data, self._check_indices(indices))

    # rates ---------------------------------------------------------------------
    def estimate_bits(self, w_hat: np.ndarray, y_sym: np.ndarray, indices: np.ndarray | None = None) -> dict[str, float]:
        """Ideal code length (bits) under the integer tables: {'w', 'y', 'total'}."""
        t = self.tables
        if indices is None:
            indices = self.scale_indices(w_hat)
        wb = 0.0
        for c in range(t.hyper_channels):
            p = t.prior_pmf(c)
            s = np.asarray(w_hat[c]).ravel().astype(np.int64) - int(t.prior_lo[c])
            wb += float((t.precision - np.log2(p[s])).sum())
        idx, ts, e = self._table_symbols(np.asarray(y_sym), np.asarray(indices))
        yb = float(self._gauss_bits[idx, ts].sum())
        if e.size:
            yb += float((np.log2(_NB_ALPHABET) + np.floor(np.log2(e + 1.0))).sum())
        return {"w": wb, "y": yb, "total": wb + yb}
