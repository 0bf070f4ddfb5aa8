"""Conformance of the two entropy-coder implementations (docs/bitstream.md section 3):
the C extension (ilc_export.codec._rangecoder) and constriction must write identical
bytes and read each other's streams, on random symbol sets and on real files of every
shipped model.

The C extension must be built (`pip install -e .` or `python setup.py build_ext --inplace`);
these tests fail, not skip, without it. Where constriction is not installed (Linux
aarch64) the cross-implementation tests skip; the C coder's own tests still run.
"""
from __future__ import annotations

import numpy as np
import pytest

from ilc_export.codec import entropy as ent
from ilc_export.codec.entropy import EntropyCodec, MAX_ABS_SYMBOL, available_coders, resolve_coder
from ilc_export.codec.errors import BitstreamError

from conftest import SAMPLE, SHARED

HAVE = available_coders()
needs_constriction = pytest.mark.skipif("constriction" not in HAVE,
                                        reason="constriction is not installed here (no wheel for this platform)")


def test_c_coder_is_built():
    assert "c" in HAVE, ("the C range coder is not built: run `pip install -e .` or "
                         "`python setup.py build_ext --inplace` (needs a C compiler)")


def test_coder_selection(monkeypatch):
    monkeypatch.setenv(ent.CODER_ENV, "c")
    assert resolve_coder() == "c"
    assert resolve_coder("auto") == HAVE[0]
    with pytest.raises(ValueError, match="unknown entropy coder"):
        resolve_coder("rans")
    monkeypatch.setenv(ent.CODER_ENV, "auto")
    assert resolve_coder() == HAVE[0] == "c"  # auto prefers the C coder where it is built


# --- random symbol sets: the raw coder ------------------------------------------------------

def _random_pmf(rng, n, kind):
    if kind == "int16":  # integer counts summing to 2**16, as our tables
        p = rng.multinomial(2**16 - n, rng.dirichlet(np.full(n, 0.3))) + 1
        return p.astype(np.float64)
    if kind == "float":
        return rng.random(n) ** 3 * rng.choice([1e-3, 1.0, 1e6])
    p = rng.dirichlet(np.full(n, 0.05))  # very peaked, many tiny entries (some exactly 0)
    p[rng.random(n) < 0.1] = 0.0
    p[0] += 1e-9
    return p


def _segments(rng, n_seg):
    """[(kind, param, symbols)]: kind 0 = Categorical(pmf, perfect=False), 1 = Uniform(n)."""
    out = []
    for _ in range(n_seg):
        if rng.random() < 0.7:
            n = int(rng.choice([2, 3, 5, 17, 93, 445, 1000, 5000]))
            pmf = _random_pmf(rng, n, rng.choice(["int16", "float", "peaked"]))
            prob = pmf / pmf.sum()
            count = int(rng.integers(0, 3000))
            sym = rng.choice(n, size=count, p=prob) if rng.random() < 0.8 else rng.integers(0, n, count)
            out.append((0, pmf, sym.astype(np.int32)))
        else:
            n = int(rng.choice([2, 3, 32, 1000, 2**16, 2**20, 2**24]))
            out.append((1, n, rng.integers(0, n, int(rng.integers(0, 2000))).astype(np.int32)))
    return out


def _constriction_encode(segments):
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    for kind, param, sym in segments:
        model = (constriction.stream.model.Categorical(param, perfect=False) if kind == 0
                 else constriction.stream.model.Uniform(param))
        if sym.size:
            enc.encode(sym, model)
    return enc.get_compressed().astype("<u4").tobytes()


def _constriction_decode(data, segments):
    """-> list of symbol arrays, or the name of the exception constriction raised."""
    import constriction

    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, "<u4").astype(np.uint32))
    out = []
    try:
        for kind, param, sym in segments:
            model = (constriction.stream.model.Categorical(param, perfect=False) if kind == 0
                     else constriction.stream.model.Uniform(param))
            out.append(np.asarray(dec.decode(model, sym.size), np.int32) if sym.size else np.zeros(0, np.int32))
    except BaseException as e:  # noqa: BLE001 - AssertionError (invalid data) or a Rust panic
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
        return "error"
    return out


def _c_segments(segments):
    out = []
    for kind, param, sym in segments:
        if kind == 0:
            out.append((0, ent.quantized_cdf(param), sym))
        else:
            out.append((1, param, sym))
    return out


def _c_encode(segments):
    return ent._c_module().encode_segments([(k, p, np.ascontiguousarray(s)) for k, p, s in _c_segments(segments)])


def _c_decode(data, segments):
    try:
        res = ent._c_module().decode_segments(data, [(k, p, s.size) for k, p, s in _c_segments(segments)])
    except BitstreamError:
        return "error"
    return [np.frombuffer(r, np.int32) for r in res]


@pytest.mark.parametrize("seed", range(6))
def test_c_coder_roundtrip_random_segments(seed):
    segs = _segments(np.random.default_rng(seed), 12)
    data = _c_encode(segs)
    dec = _c_decode(data, segs)
    assert dec != "error"
    for (_, _, sym), got in zip(segs, dec):
        np.testing.assert_array_equal(got, sym)


@needs_constriction
@pytest.mark.parametrize("seed", range(20))
def test_identical_bytes_and_cross_decoding_random_segments(seed):
    segs = _segments(np.random.default_rng(seed), 10)
    ours, theirs = _c_encode(segs), _constriction_encode(segs)
    assert ours == theirs
    for decode in (_c_decode, _constriction_decode):  # each decodes the other's (identical) bytes
        got = decode(theirs if decode is _c_decode else ours, segs)
        assert got != "error"
        for (_, _, sym), g in zip(segs, got):
            np.testing.assert_array_equal(g, sym)


@needs_constriction
@pytest.mark.parametrize("seed", range(16))
def test_same_outcome_on_garbage_and_damaged_streams(seed):
    """Decoding the same bytes gives the same symbols, or an error in both, on random and
    damaged streams (the coders agree on what is invalid data)."""
    rng = np.random.default_rng(1000 + seed)
    segs = _segments(rng, 6)
    data = bytearray(_c_encode(segs))
    how = seed % 3
    if how == 0:
        data = bytearray(rng.bytes(4 * int(rng.integers(0, 64))))
    elif how == 1 and data:
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
    else:
        data = data[: 4 * int(rng.integers(0, len(data) // 4 + 1))]
    a, b = _c_decode(bytes(data), segs), _constriction_decode(bytes(data), segs)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b == "error"
    else:
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@needs_constriction
def test_quantisation_matches_constriction_on_every_symbol():
    """Encoding every symbol of a model once pins every CDF entry (left end and width)."""
    rng = np.random.default_rng(7)
    for n in (2, 3, 4, 63, 64, 65, 255, 446, 4097):
        for kind in ("int16", "float", "peaked"):
            pmf = _random_pmf(rng, n, kind)
            segs = [(0, pmf, rng.permutation(n).astype(np.int32))]
            assert _c_encode(segs) == _constriction_encode(segs), (n, kind)


def test_quantize_cdf_refuses_what_cannot_be_a_model():
    for bad in ([1.0], [], [np.nan, 1.0], [-1.0, 2.0], [0.0, 0.0], [np.inf, 1.0]):
        with pytest.raises(ValueError):
            ent.quantized_cdf(np.array(bad, np.float64))


# --- EntropyCodec: both implementations behind the same API ------------------------------------

def _tables(kind):
    if kind == "hand":
        from test_codec_entropy import hand_tables

        return hand_tables()
    torch = pytest.importorskip("torch")
    from ilc_reference.config import tiny_config
    from ilc_reference.model import build_model

    from ilc_export.codec.tables import CodecTables
    from ilc_export.export.tables_build import build_tables

    torch.manual_seed(0)
    return CodecTables.from_tensors(build_tables(build_model(tiny_config()).eval()))


@needs_constriction
@pytest.mark.parametrize("kind", ["hand", "tiny"])
@pytest.mark.parametrize("seed", range(4))
def test_entropy_codec_identical_streams(kind, seed):
    tab = _tables(kind)
    c, k = EntropyCodec(tab, coder="c"), EntropyCodec(tab, coder="constriction")
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 6)), int(rng.integers(1, 7))
    w_hat = np.stack([int(tab.prior_lo[ch]) + rng.integers(0, int(tab.prior_len[ch]), (h, w))
                      for ch in range(tab.hyper_channels)]).astype(np.int32)
    idx = c.scale_indices(w_hat)
    y = np.round(rng.normal(0, 2.0 + 30 * (seed % 2), idx.shape)).astype(np.int32)
    y.ravel()[rng.integers(0, y.size, 5)] = rng.choice([MAX_ABS_SYMBOL, -MAX_ABS_SYMBOL, 2**17 + 3, -(2**20), 70000], 5)
    sc, sk = c.encode(w_hat, y), k.encode(w_hat, y)
    assert sc == sk
    for dec in (c, k):
        for streams in (sc, sk):
            w2, y2 = dec.decode(streams, w_hat.shape, y.shape)
            np.testing.assert_array_equal(w2, w_hat)
            np.testing.assert_array_equal(y2, y)


@needs_constriction
def test_entropy_codec_same_errors_on_damaged_streams():
    tab = _tables("hand")
    c, k = EntropyCodec(tab, coder="c"), EntropyCodec(tab, coder="constriction")
    rng = np.random.default_rng(5)
    w_hat = np.stack([int(tab.prior_lo[ch]) + rng.integers(0, int(tab.prior_len[ch]), (3, 4))
                      for ch in range(tab.hyper_channels)]).astype(np.int32)
    idx = c.scale_indices(w_hat)
    y = np.round(rng.normal(0, 3.0, idx.shape)).astype(np.int32)
    streams = c.encode(w_hat, y)
    agree = 0
    for which in (0, 1):
        for pos in range(len(streams[which])):
            bad = bytearray(streams[which])
            bad[pos] ^= 0x24
            mod = list(streams)
            mod[which] = bytes(bad)
            res = []
            for dec in (c, k):
                try:
                    res.append(dec.decode(mod, w_hat.shape, y.shape))
                except BitstreamError:
                    res.append("error")
            if isinstance(res[0], str) or isinstance(res[1], str):
                assert res[0] == res[1] == "error"
            else:
                np.testing.assert_array_equal(res[0][1], res[1][1])
            agree += 1
    assert agree > 20


# --- real files: every shipped model, Kodak images ---------------------------------------------

def _shipped():
    from ilc_export.pipeline.models import shipped_checkpoints

    return shipped_checkpoints()


def _kodak_crops():
    from PIL import Image

    paths = sorted((SHARED / "kodak").glob("*.png"))
    chosen = paths[:1] or [SAMPLE]  # all 24 images, all models: scripts/coder_conformance.py
    out = []
    for p in chosen:
        img = np.asarray(Image.open(p).convert("RGB"))
        out.append((p.stem, img[64:192, 64:256]))
    return out


@needs_constriction
@pytest.mark.slow
@pytest.mark.parametrize("ckpt", _shipped(), ids=lambda p: p.stem)
def test_shipped_models_identical_files_and_pixels(ckpt):
    pytest.importorskip("torch")
    from ilc_export.pipeline.api import open_codec

    codec = open_codec(ckpt, backend="torch")
    impls = {name: EntropyCodec(codec.tables, coder=name) for name in ("c", "constriction")}
    for name, img in _kodak_crops():
        files = {}
        for impl, ec in impls.items():
            codec.entropy = ec
            files[impl] = codec.compress(img)[0]
        assert files["c"] == files["constriction"], f"{ckpt.stem} {name}: the coders wrote different files"
        pixels = []
        for impl, ec in impls.items():
            codec.entropy = ec
            pixels.append(codec.decompress(files["c" if impl == "constriction" else "constriction"])[0])
        np.testing.assert_array_equal(pixels[0], pixels[1])


# --- the C coder releases the GIL ----------------------------------------------------------------

def test_c_coder_releases_the_gil():
    """While one thread is inside the C coder, another runs Python: independent streams (tiles,
    w and y) can be coded in parallel threads."""
    import threading
    import time

    from test_codec_entropy import hand_tables

    tab = hand_tables()
    ec = EntropyCodec(tab, coder="c")
    rng = np.random.default_rng(0)
    n = 3_000_000
    idx = rng.integers(0, tab.num_scales, n).astype(np.uint8)
    y = rng.integers(-3, 4, n).astype(np.int32)
    window = {}

    def work():
        window["start"] = time.perf_counter()
        data = ec.encode_y(y, idx)
        ec.decode_y(data, idx)
        window["end"] = time.perf_counter()

    th = threading.Thread(target=work)
    stamps = []
    th.start()
    while th.is_alive():
        stamps.append(time.perf_counter())
    th.join()
    span = window["end"] - window["start"]
    inside = [t for t in stamps if window["start"] + 0.1 * span < t < window["end"] - 0.1 * span]
    assert span > 0 and len(inside) > 100, (span, len(inside))


# --- the integer scale net: the float32 fast path equals the exact float64 path ------------------

@pytest.mark.parametrize("threads", ["1", "2"])
def test_scale_net_fast_path_is_exact(monkeypatch, threads):
    """Same indices from the float32-BLAS path (error bound + exact recompute) and the all-float64
    path, for every shipped model's tables and hand-made ones, 1 and 2 threads."""
    from ilc_export.codec import intnet
    from ilc_export.codec.tables import CodecTables

    monkeypatch.setenv(intnet.THREADS_ENV, threads)
    tables = [_tables("hand")] + [CodecTables.load(p) for p in _shipped()]
    rng = np.random.default_rng(int(threads))
    for tab in tables:
        assert intnet._f32_layer_ok(tab)
        for h, w in ((1, 1), (3, 5), (9, 15)):
            lo = tab.prior_lo.astype(np.int64)[:, None, None]
            n = tab.prior_len.astype(np.int64)[:, None, None]
            w_hat = (lo + (rng.random((tab.hyper_channels, h, w)) ** rng.choice([0.3, 1, 3]) * n).astype(np.int64)
                     .clip(0, n - 1)).astype(np.int32)
            fast = intnet.scale_indices(tab, w_hat)
            exact = intnet.scale_indices(tab, w_hat, exact_f64=True)
            np.testing.assert_array_equal(fast, exact)
            v = intnet.v_int(tab, w_hat)
            np.testing.assert_array_equal(exact, intnet.indices_from_v(tab, v))


def test_scale_net_fast_path_when_values_sit_on_thresholds():
    """Thresholds placed exactly on computed values: the bound cannot settle those elements,
    the C kernel recomputes them exactly (and thresholds that are not evenly spaced)."""
    import dataclasses

    from ilc_export.codec import intnet

    tab = _tables("hand")
    rng = np.random.default_rng(3)
    w_hat = np.stack([int(tab.prior_lo[c]) + rng.integers(0, int(tab.prior_len[c]), (4, 6))
                      for c in range(tab.hyper_channels)]).astype(np.int32)
    v = intnet.v_int(tab, w_hat)
    vals = np.unique(v)
    thr = np.sort(rng.choice(vals, size=min(len(vals), tab.num_scales - 1), replace=False)).astype(np.int64)
    tab2 = dataclasses.replace(tab, thresholds=thr)
    fast = intnet.scale_indices(tab2, w_hat)
    np.testing.assert_array_equal(fast, np.searchsorted(thr.astype(np.float64), v, side="right").astype(np.uint8))
    np.testing.assert_array_equal(fast, intnet.scale_indices(tab2, w_hat, exact_f64=True))
