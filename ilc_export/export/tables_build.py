"""Derive the codec's integer tables from a trained float model, once.

Tooling, not runtime: it uses torch (imported lazily inside the functions) to read the
float model; everything it produces is integers (see ``ilc_export.codec.tables`` for the
keys), and encoding/decoding afterwards never touches floats to select a CDF.

Integer hyper-scale network (post-training quantisation of ``model.h_s_scale``)
----------------------------------------------------------------------------
The float branch is conv3x3 -> PixelShuffle(2) -> ReLU -> conv3x3 -> PixelShuffle(2) ->
ReLU -> conv3x3, giving v = log(sigma). Per hidden channel c we pick an activation
scale s[c] = act_max / (margin * calibrated max of the activation), so that the integer
activation a[c] ~= s[c] * relu(.) fills an unsigned ``act_bits`` range. Conv output o
(of 4 that form channel c = o // 4 after depth-to-space) accumulates at scale
A[o] = s[c] * 2**k, so W_int[o, i] = round(W[o, i] * A[o] / s_in[i]) and
b_int[o] = round(b[o] * A[o]) + 2**(k-1) (the added half makes the floor-shift a round).
The last layer uses one scale 2**s for all outputs: v_int ~= v * 2**s, and the scale
index is #{i : v_int >= T_i}, T_i = ceil(2**s * (log(SCALE_MIN) + (i - 0.5) * step)),
the integer image of ilc_reference.entropy.scale_index_from_log.

The shifts k and s are the largest that keep (1) |W_int| <= 2**weight_bits - 1 and
(2) in_max * sum|W_int[o]| + |b_int[o]| <= 2**52 for every output o, half the 2**53
float64 exactness bound (checked again, exactly, by CodecTables.validate on load).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..codec.errors import TablesError
from ..codec.tables import CodecTables
from ..contract.files import write_atomic
from ..contract.geometry import NUM_SCALES, PAD_MULTIPLE, SCALE_MAX, SCALE_MIN
from ..contract.model_id import TABLE_PREFIX, compute_model_id, model_id_of_file

PRECISION = 16
ACT_BITS = 20
WEIGHT_BITS = 24
PRIOR_TAIL_MASS = 1e-9
#: activations are calibrated to margin * observed max before clipping
ACT_MARGIN = 1.5
#: hard cap on the factorized prior's support per channel
MAX_PRIOR_SUPPORT = 4096
_BOUND = 2**52


# integer CDFs ---------------------------------------------------------------
def quantize_pmf(p: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Float pmf -> int64 pmf summing to 2**precision with every entry >= 1.

    Symbols whose share would fall below one count get exactly 1; the others split the
    rest in proportion to p (largest-remainder rounding), so large probabilities keep
    their relative accuracy.
    """
    p = np.clip(np.nan_to_num(np.asarray(p, np.float64)), 0.0, None)
    n = p.size
    total = 2**precision
    if n < 2 or n >= total:
        raise ValueError(f"cannot quantise a pmf of {n} symbols at {precision} bits")
    if p.sum() <= 0:
        p = np.ones(n)
    small = np.zeros(n, bool)
    while True:
        rest = total - int(small.sum())
        scale = rest / p[~small].sum()
        new_small = small | (p * scale < 1.0)
        if (new_small == small).all():
            break
        small = new_small
    x = p * scale
    q = np.where(small, 1, np.floor(x)).astype(np.int64)
    big = np.flatnonzero(~small)
    left = total - int(q.sum())
    if left:
        frac = x[big] - q[big]
        q[big[np.argsort(-frac, kind="stable")[:left]]] += 1
    assert q.sum() == total and q.min() >= 1
    return q


def _cdf_rows(pmfs: list[np.ndarray]) -> np.ndarray:
    width = max(len(p) for p in pmfs) + 1
    out = np.empty((len(pmfs), width), np.int32)
    for r, p in enumerate(pmfs):
        c = np.concatenate([[0], np.cumsum(p)])
        out[r, : len(c)] = c
        out[r, len(c):] = c[-1]
    return out


def prior_tables(prior, precision: int = PRECISION, tail_mass: float = PRIOR_TAIL_MASS):
    """Integer CDFs of the factorized prior: (cdf (Nh, L+1), lo (Nh,), len (Nh,))."""
    g = 32
    while True:
        cdf = prior.cdf_grid(-g, g).cpu().numpy()  # (C, 2g+2) at -g-0.5 .. g+0.5
        if (cdf[:, 0] < tail_mass / 2).all() and (cdf[:, -1] > 1 - tail_mass / 2).all():
            break
        if g >= MAX_PRIOR_SUPPORT // 2:
            break
        g *= 2
    cdf = np.maximum.accumulate(np.clip(cdf, 0.0, 1.0), axis=1)
    values = np.arange(-g, g + 1)
    pmfs, los, lens = [], [], []
    for c in range(cdf.shape[0]):
        upper = cdf[c, 1:]  # CDF(k + 0.5)
        lower = cdf[c, :-1]  # CDF(k - 0.5)
        ok_lo = np.nonzero(upper > tail_mass / 2)[0]
        ok_hi = np.nonzero(lower < 1 - tail_mass / 2)[0]
        i0 = int(ok_lo[0]) if ok_lo.size else 0
        i1 = int(ok_hi[-1]) if ok_hi.size else len(values) - 1
        if i1 <= i0:  # degenerate prior: keep at least two symbols
            i1 = min(len(values) - 1, i0 + 1)
            i0 = i1 - 1
        p = upper[i0:i1 + 1] - lower[i0:i1 + 1]
        p[0] += lower[i0]  # tails fold into the end bins (the encoder clamps w)
        p[-1] += 1.0 - upper[i1]
        pmfs.append(quantize_pmf(p, precision))
        los.append(int(values[i0]))
        lens.append(i1 - i0 + 1)
    return _cdf_rows(pmfs), np.array(los, np.int32), np.array(lens, np.int32)


def scale_values() -> np.ndarray:
    """The NUM_SCALES log-spaced standard deviations (same formula as the reference)."""
    from ilc_reference.entropy import scale_table

    return scale_table().numpy()


def gaussian_tables(precision: int = PRECISION):
    """Integer CDFs per scale: (cdf (S, L+1), radius (S,)). Symbol layout: see tables.py."""
    sig = scale_values()
    pmfs, radii = [], []
    for s in sig:
        v = np.arange(0, int(math.ceil(40 * s)) + 2, dtype=np.float64)
        # mass of each value v >= 0 (the table is symmetric), from erfc for tail accuracy
        pv = 0.5 * (np.vectorize(math.erfc)((v - 0.5) / (s * math.sqrt(2)))
                    - np.vectorize(math.erfc)((v + 0.5) / (s * math.sqrt(2))))
        pv[0] = 1.0 - math.erfc(0.5 / (s * math.sqrt(2)))
        keep = np.nonzero(pv >= 2.0**-precision)[0]
        r = max(1, int(keep[-1]) if keep.size else 1)
        tail = 0.5 * math.erfc((r + 0.5) / (s * math.sqrt(2)))
        central = np.concatenate([pv[r:0:-1], pv[: r + 1]])
        pmfs.append(quantize_pmf(np.concatenate([[tail], central, [tail]]), precision))
        radii.append(r)
    return _cdf_rows(pmfs), np.array(radii, np.int32)


# integer hyper-scale network ---------------------------------------------------
def _scale_convs(model):
    from torch import nn

    net = model.h_s_scale.net
    kinds = [type(m) for m in net]
    want = [nn.Conv2d, nn.PixelShuffle, nn.ReLU, nn.Conv2d, nn.PixelShuffle, nn.ReLU, nn.Conv2d]
    if kinds != want or any(net[i].upscale_factor != 2 for i in (1, 4)):
        raise ValueError(f"h_s_scale has layers {[k.__name__ for k in kinds]}; the integer net expects "
                         "conv3x3, PixelShuffle(2), ReLU, conv3x3, PixelShuffle(2), ReLU, conv3x3")
    convs = [net[i] for i in (0, 3, 6)]
    for c in convs:
        if c.kernel_size != (3, 3) or c.padding != (1, 1) or c.stride != (1, 1) or c.groups != 1 or c.bias is None:
            raise ValueError("h_s_scale convs must be 3x3, stride 1, padding 1, with bias")
    return convs


def _image_to_tensor(img: np.ndarray):
    import torch

    a = np.asarray(img)
    if a.ndim != 3:
        raise ValueError(f"calibration image must be HxWx3 (or 3xHxW), got shape {a.shape}")
    if a.shape[-1] != 3 and a.shape[0] == 3:
        a = a.transpose(1, 2, 0)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
    h, w = t.shape[-2:]
    ph, pw = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
    if ph or pw:
        t = torch.nn.functional.pad(t, (0, pw, 0, ph), mode="replicate")
    return t


def calibration_w_hat(model, lo, pmfs, calib_images=None, n_random: int = 8, size: int = 16, seed: int = 0):
    """List of (Nh, h, w) integer arrays to calibrate activation ranges on.

    The calibration images' hyper-latents (if any) plus n_random arrays sampled i.i.d.
    from the prior pmfs (one float pmf per channel over lo[c], lo[c]+1, ...).
    """
    import torch

    hi = np.array([int(lo[c]) + len(pmfs[c]) - 1 for c in range(len(lo))])
    out = []
    if calib_images:
        with torch.no_grad():
            for img in calib_images:
                y, _ = model.analysis(_image_to_tensor(img))
                w = model.h_a(y)[0].double().numpy()
                out.append(np.clip(np.round(w), lo[:, None, None], hi[:, None, None]).astype(np.int32))
    # prior samples always join in: they cover the range the prior allows, so real
    # images whose hyper-latents stray from the calibration set do not clip
    rng = np.random.default_rng(seed)
    for _ in range(n_random):
        w = np.empty((len(lo), size, size), np.int32)
        for c in range(len(lo)):
            w[c] = int(lo[c]) + rng.choice(len(pmfs[c]), size=(size, size), p=pmfs[c])
        out.append(w)
    return out


def _float_hidden(convs, w_hats):
    """Per-channel max of the two hidden (post-ReLU) activations over the calibration set."""
    import torch
    import torch.nn.functional as F

    maxes = [None, None]
    with torch.no_grad():
        for w in w_hats:
            x = torch.from_numpy(w.astype(np.float64))[None]
            for layer in range(2):
                c = convs[layer]
                x = F.relu(F.pixel_shuffle(F.conv2d(x, c.weight.double(), c.bias.double(), padding=1), 2))
                m = x.amax(dim=(0, 2, 3)).numpy()
                maxes[layer] = m if maxes[layer] is None else np.maximum(maxes[layer], m)
    return maxes


def _choose_shift(base_w: np.ndarray, base_b: np.ndarray, in_max: float, weight_bits: int, max_shift: int = 62) -> int:
    """Largest k with round(base*2**k) inside the weight and accumulator bounds."""
    wmax = float(np.abs(base_w).max(initial=0.0))
    row = in_max * np.abs(base_w).reshape(base_w.shape[0], -1).sum(axis=1) + np.abs(base_b)
    cands = [max_shift]
    if wmax > 0:
        cands.append(math.floor(math.log2((2**weight_bits - 1) / wmax)))
    if row.max() > 0:
        cands.append(math.floor(math.log2(_BOUND / (row.max() * 1.01 + 2 * base_w[0].size + 2))))
    return int(min(cands))


def integer_hyper_scale(model, w_hats, w_bound: int, act_bits: int = ACT_BITS, weight_bits: int = WEIGHT_BITS,
                        margin: float = ACT_MARGIN):
    """Quantise h_s_scale into (weights, biases, shifts, act_max, thresholds, log2_scale)."""
    convs = _scale_convs(model)
    maxes = _float_hidden(convs, w_hats)
    act_max = 2**act_bits - 1
    s_in = np.ones(convs[0].weight.shape[1])  # w_hat is already integer
    in_max = float(w_bound)
    weights, biases, shifts = [], [], []
    for layer in range(3):
        W = convs[layer].weight.detach().double().numpy()
        b = convs[layer].bias.detach().double().numpy()
        if layer < 2:
            m = maxes[layer] * margin
            floor = max(1e-6, 1e-3 * float(m.max(initial=0.0)))
            s_out = act_max / np.maximum(m, floor)  # per channel after depth-to-space
            A0 = np.repeat(s_out, 4)  # conv output o belongs to channel o // 4
        else:
            A0 = np.ones(W.shape[0])
        base_w = W * A0[:, None, None, None] / s_in[None, :, None, None]
        base_b = b * A0
        k = _choose_shift(base_w, base_b, in_max, weight_bits)
        if layer < 2 and k < 1:
            # the calibrated range is so small that the weights would overflow their
            # bounds: give up activation resolution (coarser s_out) until k = 1 fits
            s_out = s_out * 2.0 ** (k - 1)
            base_w, base_b = base_w * 2.0 ** (k - 1), base_b * 2.0 ** (k - 1)
            k = 1
        while True:
            Wi = np.round(base_w * 2.0**k).astype(np.int64)
            bi = np.round(base_b * 2.0**k).astype(np.int64)
            if layer < 2:
                bi = bi + 2 ** (k - 1)  # floor((acc + 2**(k-1)) / 2**k) == round(acc / 2**k)
            row = int(in_max) * np.abs(Wi).reshape(Wi.shape[0], -1).sum(axis=1) + np.abs(bi)
            if np.abs(Wi).max(initial=0) <= 2**weight_bits - 1 and row.max(initial=0) <= _BOUND:
                break
            k -= 1
        weights.append(Wi.astype(np.int32))
        biases.append(bi.astype(np.int64))
        if layer < 2:
            shifts.append(k)
            s_in = s_out
            in_max = float(act_max)
        else:
            log2_scale = k
    step = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (NUM_SCALES - 1)
    thresholds = np.array([math.ceil(2.0**log2_scale * (math.log(SCALE_MIN) + (i - 0.5) * step))
                           for i in range(1, NUM_SCALES)], np.int64)
    return (weights, biases, np.array(shifts, np.int32), np.array([act_max, act_max], np.int64),
            thresholds, int(log2_scale))


# entry points -----------------------------------------------------------------
def build_tables(model, calib_images: list[np.ndarray] | None = None, *, precision: int = PRECISION,
                 act_bits: int = ACT_BITS, weight_bits: int = WEIGHT_BITS, seed: int = 0) -> dict[str, np.ndarray]:
    """Derive every ``tables.*`` array from a float model (ilc_reference model object).

    calib_images: HxWx3 arrays (uint8, or float in [0, 1]) whose hyper-latents calibrate
    the integer net's activation ranges; None samples w_hat from the prior instead.
    """
    import torch

    model = model.eval()
    with torch.no_grad():
        pcdf, plo, plen = prior_tables(model.prior, precision)
        gcdf, grad = gaussian_tables(precision)
        pmfs = [np.diff(pcdf[c, : plen[c] + 1].astype(np.float64)) / 2.0**precision for c in range(len(plo))]
        w_hats = calibration_w_hat(model, plo, pmfs, calib_images, seed=seed)
        lo64 = plo.astype(np.int64)
        w_bound = int(max(np.abs(lo64).max(), np.abs(lo64 + plen - 1).max()))
        weights, biases, shifts, amax, thr, log2s = integer_hyper_scale(model, w_hats, w_bound, act_bits, weight_bits)
    tab = CodecTables(precision=precision, prior_cdf=pcdf, prior_lo=plo, prior_len=plen, gauss_cdf=gcdf,
                      gauss_radius=grad, weights=tuple(weights), biases=tuple(biases), shifts=shifts,
                      act_max=amax, thresholds=thr, log2_scale=log2s)
    tab.validate("built tables")
    return tab.to_tensors()


def _load_images(calib_dir, max_images: int = 8, crop: int = 256) -> list[np.ndarray]:
    from PIL import Image

    paths = sorted(p for p in Path(calib_dir).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".ppm", ".bmp"))
    if not paths:
        raise FileNotFoundError(f"no calibration images (png/jpg) in {calib_dir}")
    step = max(1, len(paths) // max_images)
    out = []
    for p in paths[::step][:max_images]:
        a = np.asarray(Image.open(p).convert("RGB"))
        h, w = a.shape[:2]
        t, l = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        out.append(a[t:t + crop, l:l + crop])
    return out


def save_calibration_crops(files, dst: Path) -> Path:
    """Save each image cropped (top-left) to multiples of 64 as dst/<stem>.png: the folder of
    training images the shipped checkpoints were calibrated on (scripts/ship_models.py)."""
    from PIL import Image

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for p in files:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        h, w = a.shape[0] // 64 * 64, a.shape[1] // 64 * 64
        Image.fromarray(a[:h, :w]).save(dst / (Path(p).stem + ".png"))
    return dst


def _calibration_note(calib_dir, images) -> str:
    """What calibrated the integer scale network, for the checkpoint's metadata."""
    if not images:
        return "prior samples (seed 0)"
    import hashlib

    h = hashlib.sha256()
    for a in images:
        h.update(np.ascontiguousarray(a).tobytes())
    return f"{len(images)} image crops from {Path(calib_dir).name}/ (sha256 {h.hexdigest()[:16]})"


#: safetensors metadata key recording what calibrated the tables (not part of the model id)
CALIBRATION_KEY = "tables_calibration"


def stored_tables(ckpt_path: str | Path) -> dict[str, np.ndarray]:
    """The ``tables.*`` tensors a checkpoint holds now (empty when it has none)."""
    from safetensors import safe_open

    with safe_open(str(ckpt_path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(TABLE_PREFIX)}


def finalize_checkpoint(ckpt_path: str | Path, calib_dir: str | Path | None = None, *, replace: bool = True,
                        **kw) -> str:
    """Write freshly built tables into a checkpoint (weights and metadata kept; atomic; the
    file keeps its mode). Returns the model id (covers weights and tables).

    Tables equal to the ones the checkpoint already holds are not rewritten (the id stays).
    Different tables replace existing ones only with `replace` (else TablesError naming both
    ids: files written with the old id would no longer decode)."""
    import torch
    from ilc_reference.checkpoint import load_model
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    ckpt_path = Path(ckpt_path)
    model = load_model(ckpt_path)
    calib = _load_images(calib_dir) if calib_dir is not None else None
    tables = build_tables(model, calib, **kw)
    old = stored_tables(ckpt_path)
    if old and set(old) == set(tables) and all(
            old[k].dtype == tables[k].dtype and np.array_equal(old[k], tables[k]) for k in tables):
        return model_id_of_file(ckpt_path)
    with safe_open(str(ckpt_path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    tensors = {k: v for k, v in load_file(str(ckpt_path)).items() if not k.startswith(TABLE_PREFIX)}
    for k, v in tables.items():
        tensors[k] = torch.from_numpy(v)
    if old and not replace:
        new_id = compute_model_id({k: v.numpy() for k, v in tensors.items()}, meta.get("config"))
        raise TablesError(f"{ckpt_path}: the rebuilt tables differ from the stored ones (model id "
                          f"{model_id_of_file(ckpt_path)} -> {new_id}); files written with the old id would no "
                          "longer decode")
    meta[CALIBRATION_KEY] = _calibration_note(calib_dir, calib)
    write_atomic(ckpt_path, save(tensors, metadata=meta))  # keeps the file's mode
    return model_id_of_file(ckpt_path)
