"""The optional decoder-side network g (docs/research.md): z_hat = g(y_hat) in the inverse.

Compatibility: a config without g serialises, hashes (model id), loads and exports exactly as
before; g lives in the inverse graph only; f stays exactly invertible.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch

from ilc_export.pipeline.models import shipped_checkpoints
from ilc_reference.checkpoint import load_model, save_checkpoint
from ilc_reference.config import OPTIONAL_DEFAULTS, ModelConfig, tiny_config
from ilc_reference.model import build_model

from conftest import randomize


def g_config(**kw) -> ModelConfig:
    return dataclasses.replace(tiny_config(), name="ilc-tiny-g", z_model="g", g_hidden=8, **kw)


def _g_model(seed=0, **kw):
    torch.manual_seed(seed)
    return randomize(build_model(g_config(**kw)), scale=0.05, seed=seed).eval()


def test_default_config_json_is_unchanged():
    """New fields at their defaults are not serialised: old configs keep their exact bytes."""
    for cfg in (ModelConfig(), tiny_config(), tiny_config("baseline")):
        d = dataclasses.asdict(cfg)
        old = json.dumps({k: v for k, v in d.items() if k not in OPTIONAL_DEFAULTS}, indent=2, sort_keys=True)
        assert cfg.to_json() == old
        assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    cfg = g_config(g_lr_scale=4.0)
    d = json.loads(cfg.to_json())
    assert d["z_model"] == "g" and d["g_lr_scale"] == 4.0 and "g_hidden" in d
    assert ModelConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="z_model"):
        ModelConfig.from_dict({"z_model": "nope"})


@pytest.mark.parametrize("ckpt", shipped_checkpoints(), ids=lambda p: p.stem)
def test_shipped_checkpoints_keep_config_bytes_and_model_id(ckpt, tmp_path):
    """Loading a shipped checkpoint and saving it again (as the ship path does) reproduces
    its config metadata byte for byte, so the model id (which hashes it) is unchanged."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ilc_export.contract.model_id import model_id_of_file

    with safe_open(str(ckpt), framework="np") as f:
        meta = f.metadata()["config"]
    model = load_model(ckpt)
    assert model.cfg.to_json() == meta
    assert any(k.startswith("g.") for k in model.state_dict()) == (model.cfg.z_model == "g")
    out = save_checkpoint(model, tmp_path / ckpt.stem)
    tables = {k: v for k, v in load_file(str(ckpt)).items() if k.startswith("tables.")}
    tensors = {**load_file(str(out)), **tables}
    with safe_open(str(out), framework="np") as f:
        meta2 = f.metadata()
    save_file(tensors, str(out), metadata=meta2)
    assert model_id_of_file(out) == model_id_of_file(ckpt)


def test_model_id_depends_on_g(tmp_path):
    from ilc_export.contract.model_id import compute_model_id

    t = {"a": np.zeros(3, np.float32)}
    base = tiny_config()
    assert compute_model_id(t, base.to_json()) != compute_model_id(t, g_config().to_json())
    # fields at their defaults do not move the id, whether written out or not
    explicit = {**json.loads(base.to_json()), **OPTIONAL_DEFAULTS}
    assert compute_model_id(t, base.to_json()) == compute_model_id(t, ModelConfig.from_dict(explicit).to_json())


def test_fresh_g_starts_at_the_current_model():
    """g's last conv starts at zero: a g model with f's weights decodes exactly like z = 0."""
    torch.manual_seed(0)
    old = randomize(build_model(tiny_config()), 0.05).eval()
    new = build_model(g_config())
    res = new.load_state_dict(old.state_dict(), strict=False)
    assert not res.unexpected_keys and all(k.startswith("g.") for k in res.missing_keys) and res.missing_keys
    new.eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        a, b = old(x, quant="round"), new(x, quant="round")
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["bits"], b["bits"])


def test_f_stays_exactly_invertible_and_synthesis_uses_g():
    from ilc_export.verify.reference_eval import invertibility_error
    from PIL import Image

    from conftest import SAMPLE

    model = _g_model()
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        y, z = model.analysis(x)
        assert (model.f.inverse(y, z) - x).abs().max().item() < 1e-4
        zero = torch.zeros_like(z)
        g = model.z_mean(y)
        assert g.abs().max() > 0 and torch.equal(model.g(y)[0], y)
        assert torch.allclose(model.synthesis(y, zero), model.f.inverse(y, g), atol=1e-6)
        assert torch.allclose(model.synthesis(y, zero + 0.1), model.f.inverse(y, g + 0.1), atol=1e-6)
        assert not torch.allclose(model.synthesis(y, zero), model.f.inverse(y, zero), atol=1e-4)
    assert Image.open(SAMPLE).size  # invertibility_error reads a file
    assert invertibility_error(model, SAMPLE) < 1e-4


def test_training_with_g_trains_g_through_the_inverse():
    model = build_model(g_config())
    model.train()
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out["z_mean"] is not None
    loss, stats = model.loss(x, out)
    loss.backward()
    # the last conv (zero at init) gets a gradient from the image error through f^-1
    assert model.g.net[4].weight.grad.abs().sum() > 0
    # the z-term does not train g (it is detached there): only the image error does
    model.zero_grad()
    out = model(x)
    zterm = torch.mean((out["z"] - out["z_mean"].detach()) ** 2) / 2
    zterm.backward()
    assert model.g.net[4].weight.grad is None or model.g.net[4].weight.grad.abs().sum() == 0
    assert stats["z2"] >= 0


def test_g_lr_scale_is_the_same_function():
    a = build_model(g_config())
    torch.manual_seed(3)
    b = build_model(g_config(g_lr_scale=10.0))
    torch.manual_seed(3)
    c = build_model(g_config(g_lr_scale=1.0))
    y = torch.randn(1, a.cfg.latent_channels, 4, 4)
    for m in (b, c):
        randomize(m.g, 0.0)  # no-op perturbation: keep init
    with torch.no_grad():
        b.g.net[4].weight.normal_()
        c.g.net[4].weight.copy_(b.g.net[4].weight * 10.0)
        assert torch.allclose(b.g(y)[1], c.g(y)[1], atol=1e-4, rtol=1e-4)


def test_refine_y_starts_as_identity_and_corrects_y():
    model = build_model(g_config(g_refine_y=True)).eval()
    m = model.cfg.latent_channels
    assert model.g.net[4].out_channels == model.cfg.z_channels + m
    y = torch.randn(1, m, 4, 4)
    with torch.no_grad():
        y_in, zm = model.g(y)
        assert torch.equal(y_in, y) and torch.equal(zm, torch.zeros_like(zm))
        randomize(model.g, 0.05)
        y_in, zm = model.g(y)
        z = torch.zeros(1, model.cfg.z_channels, 4, 4)
        assert not torch.equal(y_in, y)
        assert torch.allclose(model.synthesis(y, z), model.f.inverse(y_in, zm), atol=1e-6)
    assert json.loads(model.cfg.to_json())["g_refine_y"] is True


@pytest.mark.parametrize("kw", [{"hidden": 16}, {"refine_y": True}, {"hidden": 12, "refine_y": True}])
@pytest.mark.parametrize("g_lr_scale", [1.0, 10.0])
def test_grow_g_decodes_exactly_as_before(kw, g_lr_scale):
    """grow_g widens g and/or adds the y head without changing the decoder's function, copies
    everything else bit for bit, and the grown units can learn (random incoming weights)."""
    from ilc_reference.model import grow_g

    model = _g_model(seed=4, g_lr_scale=g_lr_scale)
    grown = grow_g(model, **kw).eval()
    assert grown.cfg.g_hidden == kw.get("hidden", 8) and grown.cfg.g_refine_y == kw.get("refine_y", False)
    sd, gd = model.state_dict(), grown.state_dict()
    assert all(torch.equal(sd[k], gd[k]) for k in sd if not k.startswith("g."))
    y = torch.randn(1, model.cfg.latent_channels, 4, 4)
    z = model.zeros_z(y)
    with torch.no_grad():
        assert torch.allclose(grown.synthesis(y, z), model.synthesis(y, z), atol=1e-6, rtol=0)
        again = grow_g(grown, hidden=20, refine_y=True).eval()
        assert torch.allclose(again.synthesis(y, z), model.synthesis(y, z), atol=1e-6, rtol=0)
    if kw.get("hidden"):
        assert grown.g.net[0].weight[8:].abs().sum() > 0
    with pytest.raises(ValueError, match="no decoder-side g"):
        grow_g(build_model(tiny_config()))


def test_checkpoint_roundtrip_with_g(tmp_path):
    model = _g_model()
    path = save_checkpoint(model, tmp_path / "g")
    back = load_model(path)
    assert back.cfg == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


def _export(model, tmp_path, name):
    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_export.export.onnx_export import export_onnx

    path = save_checkpoint(model, tmp_path / name)
    finalize_checkpoint(path)
    return path, export_onnx(path, tmp_path / f"{name}-onnx")


def test_onnx_inverse_graph_computes_g_forward_graph_unchanged(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    gm = _g_model()
    torch.manual_seed(0)
    plain = build_model(tiny_config())
    plain.load_state_dict({k: v for k, v in gm.state_dict().items() if not k.startswith("g.")})
    plain.eval()
    gpath, gdir = _export(gm, tmp_path, "with-g")
    _, pdir = _export(plain, tmp_path, "plain")

    # forward graph: the same ops and weights with and without g (auto-numbered constant
    # names aside), and bit-identical outputs
    fg, fp = onnx.load(str(gdir / "forward.onnx")).graph, onnx.load(str(pdir / "forward.onnx")).graph
    assert [n.op_type for n in fg.node] == [n.op_type for n in fp.node]
    assert [o.name for o in fg.output] == [o.name for o in fp.output]

    def weights(g):
        return sorted((tuple(i.dims), i.data_type, i.raw_data) for i in g.initializer)

    assert weights(fg) == weights(fp)
    xin = {"image": np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)}
    fo = [ort.InferenceSession(str(d / "forward.onnx"), providers=["CPUExecutionProvider"]).run(None, xin)
          for d in (gdir, pdir)]
    assert all(np.array_equal(a, b) for a, b in zip(*fo))
    # inverse graph: same I/O contract (y_hat, z) -> image, and it computes f^-1(y_hat, g(y_hat) + z)
    man = json.loads((gdir / "manifest.json").read_text())
    assert man["graphs"]["inverse"] == json.loads((pdir / "manifest.json").read_text())["graphs"]["inverse"]
    assert man["config"]["z_model"] == "g"
    assert "z_model" not in json.loads((pdir / "manifest.json").read_text())["config"]
    sess = ort.InferenceSession(str(gdir / "inverse.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        y, z = gm.analysis(x)
        zs = torch.zeros_like(z)
        want = gm.synthesis(y, zs).numpy()
        without_g = gm.f.inverse(y, zs).numpy()
    got = sess.run(None, {"y_hat": y.numpy(), "z": zs.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - without_g).max() > 1e-3


def test_torch_backend_and_codec_decode_with_g(tmp_path):
    from ilc_export.backends import load_backend
    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_export.pipeline.api import open_codec

    gm = _g_model()
    path = save_checkpoint(gm, tmp_path / "with-g")
    finalize_checkpoint(path)
    run = load_backend("torch", path)
    y = torch.randn(1, gm.cfg.latent_channels, 4, 4)
    z = torch.zeros(1, gm.cfg.z_channels, 4, 4)
    out = run.run("inverse", {"y_hat": y.numpy(), "z": z.numpy()})["image"]
    with torch.no_grad():
        assert np.abs(out - gm.f.inverse(y, gm.z_mean(y)).numpy()).max() < 1e-5
    codec = open_codec(path, backend="torch")
    img = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    data, _ = codec.compress(img)
    rec, _ = codec.decompress(data)
    assert rec.shape == img.shape
