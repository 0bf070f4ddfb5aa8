"""Encoder add-ons: a latent correction next to a checkpoint changes what the encoder sends and
nothing a decoder needs. Real files, the torch backend and ONNX Runtime throughout."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ilc_export.cli.run_cli import app
from ilc_export.contract.encoder_addon import AddonError, addon_path, is_encoder_addon, read_addon_meta
from ilc_export.contract.model_id import model_id_of_file
from ilc_export.pipeline.api import open_codec
from ilc_export.pipeline.models import checkpoints_in, encoder_addon_of, find_model
from ilc_reference.checkpoint import read_config
from ilc_reference.encoder_addon import LatentCorrection, load_addon, save_addon

from conftest import randomize


def _addon(ckpt, seed=1, scale=0.02, model_id=None):
    """A random (non-zero) correction for `ckpt`, written next to it."""
    cfg = read_config(ckpt)
    torch.manual_seed(seed)
    h = randomize(LatentCorrection(cfg.latent_channels, cfg.z_channels, hidden=16), scale, seed)
    return h, save_addon(h, addon_path(ckpt), model_id or model_id_of_file(ckpt), {"note": "test"})


@pytest.fixture
def ckpt(tiny_ckpt, tmp_path):
    """A private copy of the tiny checkpoint (its folder gets an add-on)."""
    dst = tmp_path / "m" / tiny_ckpt.name
    dst.parent.mkdir()
    shutil.copyfile(tiny_ckpt, dst)
    return dst


def test_names_and_metadata(ckpt):
    p = addon_path(ckpt)
    assert p.name == "ilc-tiny.encoder.safetensors" and is_encoder_addon(p) and not is_encoder_addon(ckpt)
    _addon(ckpt)
    meta = read_addon_meta(p, model_id_of_file(ckpt))
    assert meta["kind"] == "latent-correction" and meta["info"] == {"note": "test"}
    assert meta["arch"]["hidden"] == 16
    # an add-on is never taken for a checkpoint, in a model folder or on ILC_MODEL_PATH
    assert checkpoints_in(ckpt.parent) == [ckpt]
    assert find_model(model_id_of_file(ckpt), "torch", [ckpt.parent])[1] == ckpt


def test_int8_storage_is_close_and_a_zero_correction_is_the_identity(ckpt, tmp_path):
    h, p = _addon(ckpt)
    got = load_addon(p, model_id_of_file(ckpt))
    for (k, a), (_, b) in zip(h.state_dict().items(), got.state_dict().items()):
        if a.ndim == 4:  # int8 per output channel: within half a step of that channel's scale
            step = a.abs().amax(dim=(1, 2, 3)) / 127
            assert torch.all((a - b).abs() <= step[:, None, None, None] / 2 + 1e-7), k
        else:
            assert torch.equal(a, b), k
    assert p.stat().st_size < 0.4 * sum(v.numel() * 4 for v in h.state_dict().values())
    # a 1x1 first conv: recorded in the arch, read back as such, fewer bytes
    small = randomize(LatentCorrection(h.arch["y_ch"], h.arch["z_ch"], hidden=16, k_in=1), 0.02, 2)
    q = save_addon(small, tmp_path / "s.encoder.safetensors", model_id_of_file(ckpt))
    assert read_addon_meta(q)["arch"]["k_in"] == 1 and "k_in" not in h.arch
    assert load_addon(q, None).net[0].kernel_size == (1, 1) and q.stat().st_size < p.stat().st_size / 3
    zero = LatentCorrection(8, 4, hidden=16)
    y, z = torch.randn(1, 8, 3, 5), torch.randn(1, 4, 3, 5)
    assert torch.equal(zero(y, z), y)


def test_an_addon_of_another_model_is_refused_in_one_line(ckpt, tmp_path):
    _addon(ckpt, model_id="0" * 32)
    with pytest.raises(AddonError, match="serves model 00000000"):
        load_addon(addon_path(ckpt), model_id_of_file(ckpt))
    img = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    r = CliRunner().invoke(app, ["compress", str(img), "-m", str(ckpt), "--backend", "torch"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert [ln for ln in r.output.splitlines() if ln.startswith("error:")][0].count("serves model") == 1
    assert not (tmp_path / "a.ilc").exists()
    addon_path(ckpt).write_bytes(b"not a safetensors file")
    with pytest.raises(AddonError, match="not a safetensors file"):
        read_addon_meta(addon_path(ckpt))


def test_the_encoder_sends_other_latents_and_any_decoder_reads_them(ckpt, sample_image):
    assert encoder_addon_of(ckpt) is None
    plain = open_codec(ckpt, backend="torch", threads=1)
    assert plain.runner.correction is None
    data0, _ = plain.compress(sample_image)
    _addon(ckpt)
    with_h = open_codec(ckpt, backend="torch", threads=1)
    assert with_h.runner.correction is not None
    off = open_codec(ckpt, backend="torch", threads=1, encoder_addon=False)
    assert off.runner.correction is None and off.compress(sample_image)[0] == data0
    data1, _ = with_h.compress(sample_image)
    assert data1 != data0  # other symbols ...
    # ... under the same model id, decoded by a decoder that never saw the add-on
    assert np.array_equal(plain.decompress(data1)[0], with_h.decompress(data1)[0])
    # the forward graph's y moves; z and the hyperprior's w do not (w sees the unrefined y)
    x = sample_image[:64, :64].astype(np.float32).transpose(2, 0, 1)[None] / 255
    a, b = plain.runner.run("forward", {"image": x}), with_h.runner.run("forward", {"image": x})
    assert not np.allclose(a["y"], b["y"]) and np.array_equal(a["z"], b["z"]) and np.array_equal(a["w"], b["w"])


def test_cli_no_encoder_addon_is_declared_and_refused_where_an_export_decides(ckpt, tmp_path, sample_image):
    from PIL import Image

    from ilc_export.backends.base import ENCODER_ADDON, BackendError
    from ilc_export.backends.registry import get, load_backend

    src = tmp_path / "a.png"
    Image.fromarray(sample_image).save(src)
    plain = open_codec(ckpt, backend="torch", threads=1).compress(sample_image)[0]
    _addon(ckpt)
    cli = CliRunner()
    r = cli.invoke(app, ["compress", str(src), "-m", str(ckpt), "-o", str(tmp_path / "off.ilc"), "--no-encoder-addon",
                         "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "off.ilc").read_bytes() == plain  # as if there were no add-on
    r = cli.invoke(app, ["compress", str(src), "-m", str(ckpt), "-o", str(tmp_path / "on.ilc"), "--threads", "1"])
    assert r.exit_code == 0 and (tmp_path / "on.ilc").read_bytes() != plain
    assert ENCODER_ADDON in get("torch").capabilities
    for name in ("onnxruntime", "tensorrt"):
        assert ENCODER_ADDON not in get(name).capabilities
        with pytest.raises(BackendError, match="--no-encoder-addon"):
            load_backend(name, tmp_path, encoder_addon=False)
    r = cli.invoke(app, ["compress", str(src), "-m", str(ckpt), "-b", "onnxruntime", "-o", str(tmp_path / "x.ilc"),
                         "--no-encoder-addon"])
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "x.ilc").exists()


def test_onnx_export_bakes_the_addon_into_the_forward_graph(ckpt, tmp_path, sample_image):
    pytest.importorskip("onnxruntime")
    from ilc_export.export.onnx_export import export_onnx
    from ilc_export.verify.parity import VerifyError, verify_export

    _addon(ckpt)
    on = export_onnx(ckpt, tmp_path / "on")
    off = export_onnx(ckpt, tmp_path / "off", encoder_addon=False)
    m_on, m_off = (json.loads((d / "manifest.json").read_text()) for d in (on, off))
    assert m_on["encoder_addon"]["serves"] == m_on["model_id"] == m_off["model_id"]
    assert m_off["encoder_addon"] is None
    # what keys cached results: the same model id, other files
    assert encoder_addon_of(on) == encoder_addon_of(ckpt) == m_on["encoder_addon"]["sha256"]
    assert encoder_addon_of(off) is None
    for g in ("hyper_mean", "inverse"):  # the decoder's graphs do not depend on it
        assert m_on["files"][f"{g}.onnx"]["sha256"] == m_off["files"][f"{g}.onnx"]["sha256"]
    assert m_on["files"]["forward.onnx"]["sha256"] != m_off["files"]["forward.onnx"]["sha256"]
    # ONNX Runtime with the add-on agrees with torch with the add-on, and without with without
    assert verify_export(on, images=[sample_image[:64, :96]], precisions=["fp32"])["pass"]
    assert verify_export(off, images=[sample_image[:64, :96]], precisions=["fp32"])["pass"]
    ort = open_codec(on, backend="onnxruntime", threads=1)
    torch_h = open_codec(ckpt, backend="torch", threads=1)
    data = ort.compress(sample_image)[0]
    a, b = torch_h.decompress(data)[0].astype(int), ort.decompress(data)[0].astype(int)
    assert np.abs(a - b).max() <= 1  # the cross-backend guarantee: within one grey level
    # the export's add-on must be the one next to the checkpoint it is verified against
    addon_path(ckpt).unlink()
    with pytest.raises(VerifyError, match="encoder add-on"):
        verify_export(on, images=[sample_image[:64, :96]], precisions=["fp32"])


def test_cached_results_are_not_reused_once_an_addon_is_added(ckpt, tmp_path):
    from PIL import Image

    from ilc_export.verify.rd import ResultCache, evaluate_codec

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(imgs / "a.png")
    cache = ResultCache(tmp_path / "cache.jsonl")
    before = evaluate_codec(imgs, models=[ckpt], cache=cache, threads=1)["per_image"][0][0]
    _addon(ckpt)
    after = evaluate_codec(imgs, models=[ckpt], cache=ResultCache(tmp_path / "cache.jsonl"), threads=1)["per_image"][0][0]
    assert len(ResultCache(tmp_path / "cache.jsonl").rows) == 2
    assert before["bpp"] != after["bpp"]
