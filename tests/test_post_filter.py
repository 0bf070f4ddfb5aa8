"""The optional image-domain post-filter (``cfg.post_hidden``): x_hat = p(f^-1(.)) for the ILC,
p(g_s(.)) for the baseline.

It lives in the inverse graph only: a fresh filter decodes exactly as before, the forward graph,
the tables and the bitstream are untouched, f stays exactly invertible, and the model id moves.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch

from ilc_export.contract.model_id import model_id_of_file
from ilc_reference.checkpoint import load_model, save_checkpoint
from ilc_reference.config import tiny_config
from ilc_reference.model import add_post_filter, build_model

from conftest import randomize


def _model(seed=0, **kw):
    cfg = dataclasses.replace(tiny_config(), name="ilc-tiny-g", z_model="g", g_hidden=8, g_refine_y=True, **kw)
    torch.manual_seed(seed)
    return randomize(build_model(cfg), scale=0.05, seed=seed).eval()


def _latents(model, hw=4):
    torch.manual_seed(1)
    y = torch.randn(1, model.cfg.latent_channels, hw, hw)
    return y, model.zeros_z(y)


@pytest.mark.parametrize("z_model", ["zero", "g"])
def test_added_filter_decodes_exactly_as_before(z_model):
    model = _model()
    if z_model == "zero":
        model = build_model(tiny_config()).eval()
    withp = add_post_filter(model, 6).eval()
    assert withp.cfg.post_hidden == 6 and model.cfg.post_hidden == 0
    sd, pd = model.state_dict(), withp.state_dict()
    assert set(pd) - set(sd) == {k for k in pd if k.startswith("post.")} != set()
    assert all(torch.equal(sd[k], pd[k]) for k in sd)
    y, z = _latents(model)
    with torch.no_grad():
        assert torch.equal(withp.synthesis(y, z), model.synthesis(y, z))
        randomize(withp.post, 0.05)
        assert not torch.allclose(withp.synthesis(y, z), model.synthesis(y, z), atol=1e-4)
        x = torch.rand(1, 3, 64, 64)
        assert torch.equal(withp.f.inverse(*withp.f(x)), model.f.inverse(*model.f(x)))  # f untouched and exact
    assert add_post_filter(withp, 6) is withp
    with pytest.raises(ValueError, match="6 wide; it can widen, not narrow to 4"):
        add_post_filter(withp, 4)


def test_baseline_takes_the_same_filter_after_its_synthesis(tmp_path):
    """The baseline gets the same decoder part (an equal-budget comparison needs it): added, it
    decodes exactly as before, it learns, and its inverse graph on ONNX Runtime runs it."""
    torch.manual_seed(0)
    base = randomize(build_model(tiny_config("baseline")), scale=0.05, seed=0).eval()
    withp = add_post_filter(base, 6).eval()
    assert withp.cfg.has_post and withp.cfg.kind == "baseline"
    y = torch.randn(1, base.cfg.latent_channels, 4, 4)
    with torch.no_grad():
        assert torch.equal(withp.synthesis(y), base.synthesis(y))
    withp.train()
    x = torch.rand(2, 3, 64, 64)
    withp.loss(x, withp(x))[0].backward()
    assert withp.post.net[6].weight.grad.abs().sum() > 0
    withp.eval()
    randomize(withp.post, 0.05)
    path = save_checkpoint(withp, tmp_path / "base-post")
    assert load_model(path).cfg.post_hidden == 6
    ort = pytest.importorskip("onnxruntime")
    from ilc_export.export.onnx_export import export_onnx
    from ilc_export.export.tables_build import finalize_checkpoint

    finalize_checkpoint(path)
    onnx_dir = export_onnx(path, tmp_path / "base-post-onnx")
    with torch.no_grad():
        want, before = withp.synthesis(y).numpy(), base.synthesis(y).numpy()
    sess = ort.InferenceSession(str(onnx_dir / "inverse.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: (y.numpy() if i.name == "y_hat" else np.zeros((1, 0, 4, 4), np.float32)) for i in sess.get_inputs()}
    got = sess.run(None, feed)[0]
    assert np.abs(got - want).max() < 1e-4 and np.abs(got - before).max() > 1e-3


def test_widened_filter_decodes_exactly_as_before_and_its_new_units_learn():
    withp = add_post_filter(_model(), 6).eval()
    randomize(withp.post, 0.05)
    wide = add_post_filter(withp, 10).eval()
    assert wide.cfg.post_hidden == 10 and withp.cfg.post_hidden == 6
    sd, wd = withp.state_dict(), wide.state_dict()
    assert all(torch.equal(sd[k], wd[k]) for k in sd if not k.startswith("post."))
    y, z = _latents(withp)
    with torch.no_grad():
        assert torch.allclose(wide.synthesis(y, z), withp.synthesis(y, z), atol=1e-6)
        assert wide.post.net[0].weight[6:].abs().sum() > 0  # the new units see the image ...
    assert wide.post.net[6].weight[6:].abs().sum() == 0  # ... and feed nothing yet
    wide.train()
    x = torch.rand(2, 3, 64, 64)
    loss, _ = wide.loss(x, wide(x))
    loss.backward()
    assert wide.post.net[6].weight.grad[6:].abs().sum() > 0  # the new units' outgoing weights learn


def test_config_and_model_id(tmp_path):
    model = _model()
    withp = add_post_filter(model, 6)
    assert "post_hidden" not in json.loads(model.cfg.to_json())
    assert json.loads(withp.cfg.to_json())["post_hidden"] == 6
    a, b = save_checkpoint(model, tmp_path / "a"), save_checkpoint(withp, tmp_path / "b")
    assert model_id_of_file(a) != model_id_of_file(b)
    back = load_model(b)
    assert back.cfg == withp.cfg
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in withp.state_dict().items())


def test_filter_learns_through_the_training_loss():
    withp = add_post_filter(_model(), 6).train()
    x = torch.rand(2, 3, 64, 64)
    loss, _ = withp.loss(x, withp(x))
    loss.backward()
    grads = [p.grad for p in withp.post.parameters()]
    assert all(g is not None for g in grads) and grads[-1].abs().sum() > 0  # the zero output layer learns first


def test_onnx_inverse_graph_runs_the_filter_forward_graph_unchanged(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from ilc_export.export.onnx_export import export_onnx
    from ilc_export.export.tables_build import finalize_checkpoint

    model = _model()
    withp = add_post_filter(model, 6).eval()
    randomize(withp.post, 0.05)
    dirs = []
    for name, m in (("plain", model), ("post", withp)):
        path = save_checkpoint(m, tmp_path / name)
        finalize_checkpoint(path)
        dirs.append(export_onnx(path, tmp_path / f"{name}-onnx"))
    fa, fb = (onnx.load(str(d / "forward.onnx")).graph for d in dirs)
    assert [n.op_type for n in fa.node] == [n.op_type for n in fb.node]
    man = [json.loads((d / "manifest.json").read_text()) for d in dirs]
    assert man[0]["graphs"]["inverse"] == man[1]["graphs"]["inverse"]  # same I/O contract
    assert man[1]["config"]["post_hidden"] == 6
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        y, z = withp.analysis(x)
        zs = torch.zeros_like(z)
        want, before = withp.synthesis(y, zs).numpy(), model.synthesis(y, zs).numpy()
    sess = ort.InferenceSession(str(dirs[1] / "inverse.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"y_hat": y.numpy(), "z": zs.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - before).max() > 1e-3


def test_codec_round_trip_on_both_backends(tmp_path):
    pytest.importorskip("onnxruntime")
    from ilc_export.export.onnx_export import export_onnx
    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_export.pipeline.api import open_codec

    withp = add_post_filter(_model(), 6).eval()
    randomize(withp.post, 0.05)
    path = save_checkpoint(withp, tmp_path / "post")
    finalize_checkpoint(path)
    onnx_dir = export_onnx(path, tmp_path / "post-onnx")
    img = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    data, _ = open_codec(path, backend="torch").compress(img)
    a, _ = open_codec(path, backend="torch").decompress(data)
    b, _ = open_codec(onnx_dir, backend="onnxruntime").decompress(data)
    assert a.shape == img.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_tensorrt_rtx_builds_the_inverse_graph_with_the_filter(tmp_path):
    """The filter's ops (strided conv, transposed conv) build at fp32 and fp16 for SM86/SM89
    (CPU-only AOT; the engines are not executed here)."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu12 is not installed: TensorRT builds not tested")
    from ilc_export.export import trt_build as tb
    from ilc_export.export.onnx_export import export_onnx

    withp = add_post_filter(_model(), 6).eval()
    randomize(withp.post, 0.05)
    onnx_dir = export_onnx(save_checkpoint(withp, tmp_path / "post"), tmp_path / "onnx", fp16=True)
    for fp16 in (False, True):
        m = tb.build_engines(onnx_dir, tmp_path / f"eng-{fp16}", fp16=fp16, compute_capabilities=("SM86", "SM89"),
                             flavour="tensorrt_rtx", graphs=["inverse"], min_shape="64x64", opt_shape="128x128",
                             max_shape="1x256x256")
        engines = json.loads(m.read_text())["engines"]
        assert any("inverse" in json.dumps(e) for e in (engines.values() if isinstance(engines, dict) else engines))
