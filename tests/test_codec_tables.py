"""Codec tables: derivation from the float model, validation, storage, model id."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ilc_reference.config import NUM_SCALES, tiny_config
from ilc_reference.model import build_model

from ilc_export.codec.errors import TablesError
from ilc_export.codec.tables import EXACT_FLOAT64, CodecTables
from ilc_export.contract.model_id import TABLE_PREFIX, compute_model_id, model_id_of_file
from ilc_export.export.tables_build import build_tables, finalize_checkpoint, quantize_pmf


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    return model, build_tables(model)


def test_prefix_matches_reference_checkpoint():
    from ilc_reference.checkpoint import TABLE_PREFIX as ref

    assert TABLE_PREFIX == ref


def test_build_tables_keys_dtypes(tiny):
    model, t = tiny
    assert all(k.startswith(TABLE_PREFIX) for k in t)
    assert all(v.dtype in (np.int32, np.int64) for v in t.values())
    tab = CodecTables.from_tensors(t)
    cfg = model.cfg
    assert tab.hyper_channels == cfg.hyper_channels
    assert tab.latent_channels == cfg.latent_channels
    assert tab.num_scales == NUM_SCALES
    assert max(tab.accumulator_bounds()) < EXACT_FLOAT64 // 2


def test_cdfs_are_valid(tiny):
    tab = CodecTables.from_tensors(tiny[1])
    total = 2**tab.precision
    for c in range(tab.hyper_channels):
        p = tab.prior_pmf(c)
        assert p.min() >= 1 and p.sum() == total
    for k in range(tab.num_scales):
        p = tab.gauss_pmf(k)
        assert p.min() >= 1 and p.sum() == total
        r = int(tab.gauss_radius[k])
        assert len(p) == 2 * r + 3
        central = p[1:-1]
        assert central[r] == central.max()  # mode at 0
        assert np.abs(central - central[::-1]).max() <= 1  # symmetric up to rounding
    assert (np.diff(tab.gauss_radius) >= 0).all()


def test_prior_table_matches_float_prior(tiny):
    model, t = tiny
    tab = CodecTables.from_tensors(t)
    c = 0
    lo, n = int(tab.prior_lo[c]), int(tab.prior_len[c])
    cdf = model.prior.cdf_grid(lo, lo + n - 1)[c].numpy()
    p_float = np.diff(cdf)
    p_int = tab.prior_pmf(c) / 2.0**tab.precision
    big = p_float > 1e-3
    np.testing.assert_allclose(p_int[big], p_float[big], rtol=2e-2)


def test_quantize_pmf_properties():
    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 400):
        p = rng.random(n) ** 8
        q = quantize_pmf(p, 16)
        assert q.sum() == 2**16 and q.min() >= 1
    q = quantize_pmf(np.array([1.0, 0.0, 0.0, 0.0]), 16)
    assert q.tolist() == [2**16 - 3, 1, 1, 1]


def _broken(t, key, fn):
    t = {k: v.copy() for k, v in t.items()}
    t[TABLE_PREFIX + key] = fn(t[TABLE_PREFIX + key])
    return t


@pytest.mark.parametrize("key,fn,msg", [
    ("gauss.cdf", lambda a: np.concatenate([a[:, :1], a[:, :1], a[:, 2:]], axis=1), "strictly increasing"),
    ("prior.cdf", lambda a: a - 1, "start at 0"),
    ("hs.weight2", lambda a: a * 2**20, "2\\*\\*53"),
    ("hs.bias1", lambda a: a + 2**60, "2\\*\\*53"),
    ("hs.weight0", lambda a: a[:, :-1], "shape"),
    ("hs.thresholds", lambda a: a[::-1].copy(), "nondecreasing"),
    ("version", lambda a: a + 1, "version"),
    ("hs.act_max", lambda a: a * 0 + 2**30, "act_max"),
])
def test_validation_rejects_broken_tables(tiny, key, fn, msg):
    with pytest.raises(TablesError, match=msg):
        CodecTables.from_tensors(_broken(tiny[1], key, fn))


def test_missing_tables_message(tiny, tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "weights_only.safetensors"
    save_file({"a": np.zeros(3, np.float32)}, str(p))
    with pytest.raises(TablesError, match="checkpoint has no codec tables; run `ilc-export tables --ckpt"):
        CodecTables.load(p)
    t = dict(tiny[1])
    del t[TABLE_PREFIX + "hs.weight1"]
    with pytest.raises(TablesError, match="missing tables.hs.weight1"):
        CodecTables.from_tensors(t)


def test_model_id_file_equals_dict_and_changes(tiny, tmp_path):
    from safetensors.numpy import save_file

    t = dict(tiny[1])
    t["w.weight"] = np.arange(6, dtype=np.float32).reshape(2, 3)
    p = tmp_path / "m.safetensors"
    cfg = {"kind": "ilc", "clamp": 1.0, "name": "a", "lmbda": 0.01}
    save_file(t, str(p), metadata={"config": json.dumps(cfg)})
    mid = model_id_of_file(p)
    assert len(mid) == 32 and int(mid, 16) >= 0
    assert compute_model_id(t, cfg) == mid
    # training info and training-only config fields do not count; key order does not either
    save_file(t, str(p), metadata={"config": json.dumps({"lmbda": 0.5, "name": "b", "clamp": 1.0, "kind": "ilc"}),
                                   "info": "other"})
    assert model_id_of_file(p) == mid
    # the architecture does: equal tensors under another clamp decode differently
    save_file(t, str(p), metadata={"config": json.dumps({**cfg, "clamp": 2.0})})
    assert model_id_of_file(p) != mid
    assert compute_model_id(t) != mid  # no config at all
    save_file(t, str(p), metadata={"config": "not json"})
    with pytest.raises(ValueError, match="config is not JSON"):
        model_id_of_file(p)
    t2 = dict(t)
    t2["w.weight"] = t["w.weight"].copy()
    t2["w.weight"][0, 0] = np.nextafter(np.float32(0), np.float32(1))
    assert compute_model_id(t2, cfg) != mid
    t3 = dict(t)
    t3[TABLE_PREFIX + "hs.bias2"] = t[TABLE_PREFIX + "hs.bias2"] + 1
    assert compute_model_id(t3, cfg) != mid
    t4 = dict(t)
    t4["w.weight"] = t["w.weight"].reshape(3, 2)  # same bytes, other shape
    assert compute_model_id(t4, cfg) != mid


def test_finalize_checkpoint(tmp_path):
    from ilc_reference.checkpoint import load_model, save_checkpoint
    from safetensors import safe_open

    torch.manual_seed(1)
    model = build_model(tiny_config())
    path = save_checkpoint(model, tmp_path / "tiny", info={"note": "x"})
    id_before = model_id_of_file(path)
    with pytest.raises(TablesError, match="no codec tables"):
        CodecTables.load(path)
    path.chmod(0o640)
    mid = finalize_checkpoint(path)
    assert mid == model_id_of_file(path) != id_before
    assert path.stat().st_mode & 0o777 == 0o640  # rewritten in place, the mode kept
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left
    tab = CodecTables.load(path)
    assert tab.latent_channels == 16
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    assert json.loads(meta["info"]) == {"note": "x"} and "config" in meta
    reloaded = load_model(path)  # weights intact, tables ignored by the reference
    for k, v in model.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k])
    assert not list(tmp_path.glob("*.tmp"))
    # idempotent: rebuilding gives the same tables and id
    assert finalize_checkpoint(path) == mid


def test_calibration_on_images(tiny):
    model, _ = tiny
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), rng.random((70, 64, 3)).astype(np.float32)]
    tab = CodecTables.from_tensors(build_tables(model, imgs))
    assert tab.latent_channels == 16
