"""The fast entropy stage is the old one, integer for integer and byte for byte.

- The C scale-net path (intnet._scale_indices_c: C im2col / hidden post / last-layer post
  around numpy GEMMs) gives the indices of the all-float64 reference path, and the hidden
  activations of hidden_activations, for every shipped model: random w_hat, w_hat at the
  bounds of the prior's support (the largest accumulators the format allows), forged tables
  whose hidden layers saturate at act_max or sit on the floor boundaries, every band split,
  1 and 2 threads.
- Streams written before the change (tests/data/entropy_golden.npz: every shipped model,
  Kodak crops, every tile; the baselines' written by the pre-change coder, commit e0e7db0; the
  ILC's rewritten for its new checkpoints by scripts/entropy_golden.py, with a coder that
  reproduced the old entries) decode to the same symbols and are written again byte for byte.
- The C coder's grouping by scale index (4 interleaved blocks) on every small size.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ilc_export.codec import intnet
from ilc_export.codec.entropy import EntropyCodec, available_coders
from ilc_export.codec.tables import CodecTables

GOLDEN = Path(__file__).resolve().parent / "data" / "entropy_golden.npz"

pytestmark = pytest.mark.skipif(not intnet._has_c_kernels(), reason="the C extension is not built")


def _shipped_paths():
    from ilc_export.pipeline.models import shipped_checkpoints

    return shipped_checkpoints()


@pytest.fixture(scope="module")
def shipped():
    return {p.stem: CodecTables.load(p) for p in _shipped_paths()}


def _support(tab):
    lo = tab.prior_lo.astype(np.int64)[:, None, None]
    return lo, lo + tab.prior_len.astype(np.int64)[:, None, None] - 1


def _adversarial(tab, h, w, rng):
    """w_hat at the edges of the prior's support: all low, all high, checkerboards, random
    extremes, and patterns aligned with the signs of one output channel's layer-0 weights
    (the largest |accumulator| any file can produce for that channel)."""
    lo, hi = _support(tab)
    nh = tab.hyper_channels
    full = lambda v: np.broadcast_to(v, (nh, h, w))  # noqa: E731
    yield full(lo)
    yield full(hi)
    cb = (np.indices((h, w)).sum(0) % 2).astype(bool)[None]
    yield np.where(cb, lo, hi)
    yield np.where(rng.random((nh, h, w)) < 0.5, lo, hi)
    w0 = tab.weights[0]
    for o in rng.choice(w0.shape[0], 3, replace=False):
        centre = w0[o][:, 1, 1]  # sign of the centre tap per input channel
        pat = np.where((centre > 0)[:, None, None], hi, lo)
        yield np.broadcast_to(pat, (nh, h, w))
        yield np.broadcast_to(np.where((centre > 0)[:, None, None], lo, hi), (nh, h, w))


def _check_same(tab, w_hat):
    w_hat = np.ascontiguousarray(w_hat, dtype=np.int32)
    fast = intnet.scale_indices(tab, w_hat)
    ref = intnet.scale_indices(tab, w_hat, exact_f64=True)
    np.testing.assert_array_equal(fast, ref)
    a_ref = intnet.hidden_activations(tab, w_hat)
    a_c = intnet._hidden_c(tab, w_hat)
    np.testing.assert_array_equal(a_c[:, 1:-1, 1:-1], a_ref)
    assert not a_c[:, 0].any() and not a_c[:, -1].any() and not a_c[:, :, 0].any() and not a_c[:, :, -1].any()
    return fast


@pytest.mark.parametrize("threads", ["1", "2"])
def test_c_path_equals_float64_path_on_shipped_models(shipped, monkeypatch, threads):
    monkeypatch.setenv(intnet.THREADS_ENV, threads)
    rng = np.random.default_rng(14 + int(threads))
    for name, tab in shipped.items():
        lo, hi = _support(tab)
        for h, w in ((1, 1), (1, 7), (5, 1), (3, 4), (9, 15)):
            u = rng.random((tab.hyper_channels, h, w)) ** rng.choice([0.3, 1.0, 3.0])
            _check_same(tab, (lo + (u * (hi - lo + 1)).astype(np.int64)).clip(lo, hi))
            for w_hat in _adversarial(tab, h, w, rng):
                _check_same(tab, w_hat)


def test_c_path_band_splits(shipped, monkeypatch):
    tab = shipped["ilc-q2"]
    rng = np.random.default_rng(5)
    lo, hi = _support(tab)
    w_hat = np.where(rng.random((tab.hyper_channels, 6, 5)) < 0.5, lo, hi).astype(np.int32)
    ref = _check_same(tab, w_hat)
    for budget in (1, 5000, 60000):
        monkeypatch.setattr(intnet, "BAND_BYTES", budget)
        np.testing.assert_array_equal(intnet.scale_indices(tab, w_hat), ref)


@pytest.mark.parametrize("variant", ["off", "layer1", "both", "scalar_post", "bands", "last_direct"])
def test_winograd_hidden_layers(shipped, monkeypatch, variant):
    """The Winograd F(2x2, 3x3) layers give the direct path's activations and indices: off,
    on layers 1 and 2 (the default), on every layer (odd sizes: padded tiles), with
    wino_post's scalar int64 loop instead of the vectorised one, in small bands, and with
    the last layer on the im2col GEMM."""
    if variant == "off":
        monkeypatch.setenv(intnet.WINOGRAD_ENV, "0")
    elif variant == "both":
        monkeypatch.setattr(intnet, "WINOGRAD_LAYERS", (0, 1, 2))
    elif variant == "bands":
        monkeypatch.setattr(intnet, "WINOGRAD_LAYERS", (0, 1, 2))
        monkeypatch.setattr(intnet, "BAND_BYTES", 1)
    elif variant == "last_direct":
        monkeypatch.setattr(intnet, "WINOGRAD_LAYERS", (1,))
    rng = np.random.default_rng(21)
    for name, tab in shipped.items():
        if variant != "layer1" and name != "ilc-q2":
            continue  # the other models run the default (layer 1) in the tests above
        prep = intnet._prepared(tab)
        assert prep["wino"][1] is not None, name  # the shipped tables pass the bound
        assert prep["wino_last"] is not None, name
        if variant == "scalar_post":
            prep["wino"] = [None if x is None else (x[0], x[1], False) for x in prep["wino"]]
            monkeypatch.setattr(intnet, "WINOGRAD_LAYERS", (0, 1, 2))
        lo, hi = _support(tab)
        for h, w in ((1, 1), (2, 3), (5, 4), (9, 15)):
            _check_same(tab, (lo + rng.integers(0, 1 << 20, (tab.hyper_channels, h, w)) % (hi - lo + 1)))
            for w_hat in list(_adversarial(tab, h, w, rng))[:4]:
                _check_same(tab, w_hat)
        tab.__dict__.pop("_intnet_prepared", None)


def test_winograd_bound_refuses():
    """Weights whose Winograd GEMM could leave 2**53 (or |m| 2**51 for the vectorised post)."""
    w = np.zeros((4, 2, 3, 3), np.int32)
    b = np.zeros(4, np.int64)
    w[0, 0, 0, 0] = 2**20
    # U_00 = 4 * 2**20; bound 4 * in_max * 2**22
    assert intnet._winograd_weights(w, b, 2**28)[2] is False  # 2**52: exact, not below 2**51
    assert intnet._winograd_weights(w, b, 2**29) is None  # 2**53: refused
    assert intnet._winograd_weights(w, b, 2**20)[2] is True
    assert intnet._winograd_weights(w[:3], b[:3], 1) is None  # cout not a multiple of 4


def _last_layer_inputs(tab, h, w, rng):
    """Activations (the last layer's input) at its edges: act_max everywhere, checkerboards of
    0 / act_max, random extremes, random values, and patterns aligned with the signs of one
    output channel's weights."""
    top = int(tab.act_max[1])
    nh = tab.weights[2].shape[1]
    yield np.full((nh, h, w), top)
    cb = (np.indices((h, w)).sum(0) % 2)[None]
    yield np.broadcast_to(cb * top, (nh, h, w))
    yield np.where(rng.random((nh, h, w)) < 0.5, 0, top)
    yield rng.integers(0, top + 1, (nh, h, w))
    w2 = tab.weights[2]
    for o in rng.choice(w2.shape[0], 2, replace=False):
        yield np.broadcast_to((w2[o][:, 1, 1] > 0)[:, None, None] * top, (nh, h, w))


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (8, 9), (36, 60)])
def test_winograd_last_layer_error_bound(shipped, hw):
    """The float32 Winograd last layer stays within its stated error bound of the exact
    integer conv: |v32 - (conv - ...)| <= wscale_o * cn_p for every element (the bound
    last_post relies on), on activations at the edges of their range, odd sizes included."""
    from ilc_export.codec import _rangecoder as rc

    h, w = hw
    rng = np.random.default_rng(h * 100 + w)
    worst = 0.0
    for name in ("ilc-q1", "ilc-q2", "baseline-q3"):
        tab = shipped[name]
        u32, wscale = intnet._winograd_last_weights(tab.weights[2], int(tab.act_max[1]))
        cout, cin = u32.shape[1:]
        th, tw = (h + 1) // 2, (w + 1) // 2
        w_direct = tab.weights[2].astype(np.float64)
        for a in _last_layer_inputs(tab, h, w, rng):
            xp = np.zeros((cin, h + 2, w + 2), np.float32)
            xp[:, 1:-1, 1:-1] = a
            v = np.empty((16, cin, th * tw), np.float32)
            norms = np.empty((16, th * tw))
            rc.wino_in(xp, cin, h + 2, w + 2, 0, th, v, norms)
            m = np.matmul(u32, v)
            vv = np.empty((cout, h * w), np.float32)
            cn = np.empty(h * w)
            rc.wino_last_out(m, norms, 0, th, h, w, vv, cn)
            exact = np.zeros((cout, h, w))  # conv3x3 without bias, exact in float64 (accumulator bound)
            for kh in range(3):
                for kw in range(3):
                    exact += np.einsum("oc,chw->ohw", w_direct[:, :, kh, kw], xp[:, kh:kh + h, kw:kw + w].astype(np.float64))
            err = np.abs(vv.astype(np.float64) - exact.reshape(cout, -1))
            bound = wscale[:, None] * cn[None, :]
            assert (err <= bound).all(), (name, float((err / np.maximum(bound, 1e-300)).max()))
            worst = max(worst, float((err / np.maximum(bound, 1e-300)).max()))
    assert worst < 1.0


def test_winograd_last_layer_refuses_inexact_inputs():
    w = np.ones((3, 2, 3, 3), np.int32)
    assert intnet._winograd_last_weights(w, 2**21) is not None
    assert intnet._winograd_last_weights(w, 2**22) is None  # V up to 2**24: not exact in float32
    assert intnet._winograd_last_weights(w.astype(np.int64) << 31, 1) is None


def _forged(tab, kind):
    """Valid tables (CodecTables.validate) that push the hidden layers to their edges."""
    bs = list(tab.biases)
    if kind == "saturate":  # hidden layers clip at act_max almost everywhere
        for layer in range(2):
            k = int(tab.shifts[layer])
            bs[layer] = np.full_like(bs[layer], int(tab.act_max[layer]) << k)
    elif kind == "floor":  # accumulators land on and next to multiples of 2**k
        for layer in range(2):
            k = int(tab.shifts[layer])
            bs[layer] = (bs[layer] >> k << k) - (np.arange(bs[layer].size) % 3 - 1)
    t = dataclasses.replace(tab, biases=tuple(bs))
    t.validate()
    return t


@pytest.mark.parametrize("kind", ["saturate", "floor"])
def test_c_path_on_forged_tables(shipped, kind):
    tab = _forged(shipped["ilc-q2"], kind)
    rng = np.random.default_rng(7)
    lo, hi = _support(tab)
    for h, w in ((2, 3), (7, 4)):
        _check_same(tab, (lo + rng.integers(0, 1 << 20, (tab.hyper_channels, h, w)) % (hi - lo + 1)))
        for w_hat in _adversarial(tab, h, w, rng):
            _check_same(tab, w_hat)


def test_c_path_unevenly_spaced_thresholds(shipped):
    """The table-free settling assumes nearly even thresholds; uneven ones must still be exact
    (they fall back to the per-element path)."""
    tab = shipped["ilc-q1"]
    rng = np.random.default_rng(9)
    lo, hi = _support(tab)
    w_hat = (lo + rng.integers(0, 1 << 20, (tab.hyper_channels, 5, 6)) % (hi - lo + 1)).astype(np.int32)
    v = intnet.v_int(tab, w_hat)
    thr = np.sort(rng.choice(np.unique(v), tab.num_scales - 1, replace=False)).astype(np.int64)
    tab2 = dataclasses.replace(tab, thresholds=thr)
    np.testing.assert_array_equal(intnet.scale_indices(tab2, w_hat),
                                  np.searchsorted(thr.astype(np.float64), v, side="right").astype(np.uint8))
    step = (tab.thresholds[-1] - tab.thresholds[0]) // (tab.num_scales - 2)
    wobbly = tab.thresholds + (rng.integers(-1, 2, tab.thresholds.size) * (step // 3))
    tab3 = dataclasses.replace(tab, thresholds=np.sort(wobbly).astype(np.int64))
    np.testing.assert_array_equal(intnet.scale_indices(tab3, w_hat), intnet.scale_indices(tab3, w_hat, exact_f64=True))


# --- streams written before the change -----------------------------------------------------------

def _golden():
    if not GOLDEN.exists():
        return {}
    data = np.load(GOLDEN)
    tiles = {}
    for key in data.files:
        model, crop, t, part = key.split("/")
        tiles.setdefault((model, crop, int(t)), {})[part] = data[key]
    return tiles


@pytest.mark.parametrize("coder", available_coders())
def test_old_streams_decode_and_reencode_identically(shipped, coder):
    tiles = _golden()
    assert tiles, f"{GOLDEN} is missing"
    codecs = {}
    for (model, crop, t), d in sorted(tiles.items()):
        ec = codecs.get(model) or codecs.setdefault(model, EntropyCodec(shipped[model], coder=coder))
        w_hat, y = d["w"].astype(np.int32), d["y"].astype(np.int32)
        streams = [d["s0"].tobytes(), d["s1"].tobytes()]
        w2, y2 = ec.decode(streams, w_hat.shape, y.shape)
        np.testing.assert_array_equal(w2, w_hat, err_msg=f"{model} {crop} tile {t}")
        np.testing.assert_array_equal(y2, y, err_msg=f"{model} {crop} tile {t}")
        assert ec.encode(w_hat, y) == streams, f"{model} {crop} tile {t}: different bytes"
    assert {m for m, _, _ in tiles} == set(shipped)


# --- the C coder's grouping by scale index ---------------------------------------------------------

@pytest.mark.parametrize("n", list(range(0, 18)) + [63, 64, 65, 1001])
def test_grouping_every_small_size(n):
    from test_codec_entropy import hand_tables

    tab = hand_tables()
    rng = np.random.default_rng(n)
    ec = EntropyCodec(tab, coder="c")
    for trial in range(3):
        idx = rng.integers(0, tab.num_scales, n).astype(np.uint8)
        if trial == 1 and n:
            idx[:] = idx[0]  # one group
        y = rng.integers(-40, 41, n).astype(np.int32)
        data = ec.encode_y(y, idx)
        np.testing.assert_array_equal(ec.decode_y(data, idx), y)
        if "constriction" in available_coders():
            assert EntropyCodec(tab, coder="constriction").encode_y(y, idx) == data
