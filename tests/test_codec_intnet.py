"""The integer hyper-scale network: exact on every evaluation path, close to the float model."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from ilc_reference.config import SCALE_MAX, SCALE_MIN, tiny_config
from ilc_reference.entropy import gaussian_likelihood, scale_index_from_log, scale_table
from ilc_reference.model import build_model

from ilc_export.codec import intnet
from ilc_export.codec.entropy import EntropyCodec
from ilc_export.codec.tables import CodecTables
from ilc_export.export.tables_build import build_tables


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    tab = CodecTables.from_tensors(build_tables(model))
    return model, tab


def prior_sample(tab, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([int(tab.prior_lo[c]) + rng.choice(int(tab.prior_len[c]), size=(h, w),
                                                       p=tab.prior_pmf(c) / 2.0**tab.precision)
                     for c in range(tab.hyper_channels)]).astype(np.int32)


def torch_int_net(tab, w_hat):
    """Independent evaluation of the same integer net with torch float64 conv2d."""
    x = torch.from_numpy(w_hat.astype(np.float64))[None]
    for i in range(2):
        acc = F.conv2d(x, torch.from_numpy(tab.weights[i].astype(np.float64)),
                       torch.from_numpy(tab.biases[i].astype(np.float64)), padding=1)
        a = torch.clamp(torch.floor(acc / 2.0 ** int(tab.shifts[i])), 0, float(tab.act_max[i]))
        x = F.pixel_shuffle(a, 2)
    v = F.conv2d(x, torch.from_numpy(tab.weights[2].astype(np.float64)),
                 torch.from_numpy(tab.biases[2].astype(np.float64)), padding=1)
    return v[0].numpy()


def int64_net(tab, w_hat):
    """Pure int64 evaluation (no floating point at all)."""

    def conv(x, w, b):
        cin, h, ww = x.shape
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
        cols = np.stack([xp[:, i:i + h, j:j + ww] for i in range(3) for j in range(3)], axis=1)  # (cin, 9, h, w)
        acc = np.tensordot(w.reshape(w.shape[0], cin * 9).astype(np.int64),
                           cols.reshape(cin * 9, h * ww).astype(np.int64), axes=1)
        return acc.reshape(-1, h, ww) + b.astype(np.int64)[:, None, None]

    x = w_hat.astype(np.int64)
    for i in range(2):
        acc = conv(x, tab.weights[i], tab.biases[i])
        a = np.clip(acc >> int(tab.shifts[i]), 0, int(tab.act_max[i]))  # >> floors like floor division
        c4, h, w = a.shape
        x = a.reshape(c4 // 4, 2, 2, h, w).transpose(0, 3, 1, 4, 2).reshape(c4 // 4, 2 * h, 2 * w)
    return conv(x, tab.weights[2], tab.biases[2])


def test_exact_against_torch_float64_and_int64(setup):
    _, tab = setup
    w = prior_sample(tab, 5, 7)
    v = intnet.v_int(tab, w)
    assert v.shape == (tab.latent_channels, 20, 28)
    np.testing.assert_array_equal(v, torch_int_net(tab, w))
    np.testing.assert_array_equal(v, int64_net(tab, w).astype(np.float64))
    idx = intnet.scale_indices(tab, w)
    np.testing.assert_array_equal(idx, intnet.indices_from_v(tab, v))


def test_extreme_inputs_stay_exact(setup):
    _, tab = setup
    lo = tab.prior_lo.astype(np.int64)[:, None, None]
    hi = lo + tab.prior_len[:, None, None] - 1
    rng = np.random.default_rng(3)
    w = np.where(rng.random((tab.hyper_channels, 4, 4)) < 0.5, lo, hi).astype(np.int32)  # saturating
    np.testing.assert_array_equal(intnet.v_int(tab, w), int64_net(tab, w).astype(np.float64))


def test_summation_order_does_not_matter(setup, monkeypatch):
    _, tab = setup
    w = prior_sample(tab, 4, 4, seed=1)
    v = intnet.v_int(tab, w)
    # 1) different band splits (im2col chunks) give identical results
    monkeypatch.setattr(intnet, "BAND_BYTES", 1)
    np.testing.assert_array_equal(intnet.v_int(tab, w), v)
    monkeypatch.undo()
    # 2) permuting the hidden channels (and so the order of every dot product) changes nothing
    rng = np.random.default_rng(0)
    nh = tab.hyper_channels
    ws, bs = list(tab.weights), list(tab.biases)
    for layer in range(2):
        perm = rng.permutation(nh)
        out_perm = (perm[:, None] * 4 + np.arange(4)[None]).ravel()  # conv outputs move in groups of 4
        ws[layer] = ws[layer][out_perm]
        bs[layer] = bs[layer][out_perm]
        ws[layer + 1] = ws[layer + 1][:, perm]
    ptab = CodecTables(tab.precision, tab.prior_cdf, tab.prior_lo, tab.prior_len, tab.gauss_cdf, tab.gauss_radius,
                       tuple(ws), tuple(bs), tab.shifts, tab.act_max, tab.thresholds, tab.log2_scale)
    ptab.validate()
    np.testing.assert_array_equal(intnet.v_int(ptab, w), v)
    # 3) last layer summed sequentially in a random order of its K products
    a = intnet.hidden_activations(tab, w).astype(np.float64)
    cin, h, ww = a.shape
    ap = np.pad(a, ((0, 0), (1, 1), (1, 1)))
    cols = np.stack([ap[:, i:i + h, j:j + ww] for i in range(3) for j in range(3)], axis=1).reshape(cin * 9, -1)
    W = tab.weights[2].reshape(tab.latent_channels, -1).astype(np.float64)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(cin * 9)
        prods = W[:, order, None] * cols[None, order, :]  # (M, K, N)
        acc = np.cumsum(prods[:, ::-1] if seed % 2 else prods, axis=1)[:, -1] + tab.biases[2][:, None]
        np.testing.assert_array_equal(acc.reshape(v.shape), v)


def test_indices_match_float_model(setup):
    model, tab = setup
    w = prior_sample(tab, 16, 16, seed=2)
    idx = intnet.scale_indices(tab, w)
    with torch.no_grad():
        v_float = model.hyper_scale(torch.from_numpy(w).float()[None])[0]
    ref = scale_index_from_log(v_float).numpy()
    agree = (idx == ref).mean()
    assert agree > 0.99, agree
    assert np.abs(idx.astype(int) - ref).max() <= 1
    # the integer log-scale itself tracks the float one closely
    err = np.abs(intnet.log_scale_of_v(tab, intnet.v_int(tab, w)) - v_float.double().numpy())
    assert err.max() < 0.01


def test_indices_match_on_image_latents(setup):
    model, tab = setup
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((1, 3, 128, 128)).astype(np.float32))
    with torch.no_grad():
        y, _ = model.analysis(img)
        w = EntropyCodec(tab).quantize_w(model.h_a(y)[0].numpy())
        v_float = model.hyper_scale(torch.from_numpy(w).float()[None])[0]
    agree = (intnet.scale_indices(tab, w) == scale_index_from_log(v_float).numpy()).mean()
    assert agree > 0.99, agree


def test_rate_cost_of_integer_path(setup):
    """Bits under the integer tables + integer indices vs the float model's likelihoods."""
    model, tab = setup
    w = prior_sample(tab, 12, 12, seed=4)
    with torch.no_grad():
        v = model.hyper_scale(torch.from_numpy(w).float()[None])[0].double()
    sigma = torch.exp(v).clamp(SCALE_MIN, SCALE_MAX)
    rng = np.random.default_rng(5)
    y = np.round(rng.normal(0.0, sigma.numpy())).astype(np.int32)
    float_bits = float(-torch.log2(gaussian_likelihood(torch.from_numpy(y).double(), sigma)).sum())
    codec = EntropyCodec(tab)
    int_idx = intnet.scale_indices(tab, w)
    flt_idx = scale_index_from_log(v).numpy().astype(np.uint8)
    bits_int = codec.estimate_bits(w, y, int_idx)["y"]
    bits_flt_idx = codec.estimate_bits(w, y, flt_idx)["y"]
    real = 8 * len(codec.encode_y(y, int_idx))
    # table quantisation (64 scales, 16-bit CDFs) costs little; the integer net adds ~nothing
    assert bits_int / float_bits < 1.02, (bits_int, float_bits)
    assert abs(bits_int - bits_flt_idx) / bits_flt_idx < 0.002
    assert abs(real - bits_int) / bits_int < 0.01 + 64 / bits_int


def test_rejects_bad_w_hat(setup):
    _, tab = setup
    w = prior_sample(tab, 2, 2)
    with pytest.raises(ValueError, match="support"):
        intnet.scale_indices(tab, w + 10**6)
    with pytest.raises(ValueError, match="shape"):
        intnet.scale_indices(tab, w[:-1])
    with pytest.raises(ValueError, match="integers"):
        intnet.scale_indices(tab, w.astype(np.float32))


def test_thresholds_match_float_reference(setup):
    _, tab = setup
    step = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (tab.num_scales - 1)
    logs = np.log(scale_table().numpy())
    # v exactly at each table entry maps to that entry
    v = np.round(logs * 2.0**tab.log2_scale)
    np.testing.assert_array_equal(intnet.indices_from_v(tab, v), np.arange(tab.num_scales))
    assert abs(tab.thresholds[0] * 2.0**-tab.log2_scale - (math.log(SCALE_MIN) + 0.5 * step)) < 1e-9
