"""Encoder-side latent refinement (REFINE): a better y for the same decoder and file format."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ilc_export.backends.base import BackendError, REFINE  # noqa: E402
from ilc_export.backends.registry import get, load_backend  # noqa: E402
from ilc_export.pipeline.codec import ImageCodec  # noqa: E402


def _img(seed=0, h=64, w=128):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.float64)
    img = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 12, (h, w, 3))  # blocks + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def test_refine_latents_never_worse_and_stops_at_zero_steps(tiny_ckpt):
    from ilc_reference.checkpoint import load_model
    from ilc_reference.refine import refine_latents

    torch.manual_seed(0)
    m = load_model(tiny_ckpt).eval()
    x = torch.from_numpy(_img().transpose(2, 0, 1)[None].astype(np.float32) / 255)
    y, _ = m.analysis(x)
    w_hat = torch.round(m.h_a(y)).detach()
    y = y.detach()
    assert refine_latents(m, x, y, w_hat, iters=0) is y

    def objective(yy):
        from ilc_reference.config import SCALE_MAX, SCALE_MIN
        from ilc_reference.entropy import gaussian_likelihood

        with torch.no_grad():
            mu = m.hyper_mean(w_hat)
            sigma = torch.exp(m.hyper_scale(w_hat)).clamp(SCALE_MIN, SCALE_MAX)
            r = torch.round(yy - mu)
            bpp = -torch.log2(gaussian_likelihood(r, sigma)).sum() / (x.shape[2] * x.shape[3])
            mse = torch.mean((m.synthesis(r + mu, m.zeros_z(yy)) - x) ** 2)
        return (bpp + m.cfg.lmbda * 255**2 * mse).item()

    y2 = refine_latents(m, x, y, w_hat, iters=15, lr=0.01)
    assert y2.shape == y.shape
    assert objective(y2) < objective(y)  # it found a better y, and the model's weights are untouched
    assert all(p.requires_grad for p in m.parameters())


def test_refined_files_decode_with_the_plain_decoder(tiny_ckpt):
    torch.set_num_threads(1)
    plain = ImageCodec(load_backend("torch", tiny_ckpt))
    refined = ImageCodec(load_backend("torch", tiny_ckpt, refine=10, refine_lr=0.01))
    img = _img(1)
    d0, _ = plain.compress(img)
    d1, _ = refined.compress(img)
    assert d1 != d0
    out0, _ = plain.decompress(d0)
    out1, _ = plain.decompress(d1)  # no refinement is needed (or known) to decode
    assert out1.shape == img.shape
    assert np.array_equal(refined.decompress(d1)[0], out1)
    # same model, same header: only the y symbols moved
    assert d1[:16] == d0[:16]


def test_refine_is_declared_and_refused_where_there_are_no_gradients(tiny_ckpt, tmp_path):
    assert REFINE in get("torch").capabilities
    for name in ("onnxruntime", "tensorrt"):
        assert REFINE not in get(name).capabilities
        with pytest.raises(BackendError, match="cannot refine"):
            load_backend(name, tmp_path, refine=5)
    with pytest.raises(BackendError, match="refine"):
        load_backend("torch", tiny_ckpt, refine=-1)


def test_cli_refine(tiny_ckpt, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from ilc_export.cli.run_cli import app

    src = tmp_path / "a.png"
    Image.fromarray(_img(2)).save(src)
    cli = CliRunner()
    r = cli.invoke(app, ["compress", str(src), "-m", str(tiny_ckpt), "-o", str(tmp_path / "r.ilc"), "--refine", "3",
                         "--threads", "1"])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["decompress", str(tmp_path / "r.ilc"), "-m", str(tiny_ckpt), "-o", str(tmp_path / "r.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "r.png").size == (128, 64)
    r = cli.invoke(app, ["compress", str(src), "-m", str(tiny_ckpt), "-b", "onnxruntime", "-o",
                         str(tmp_path / "x.ilc"), "--refine", "3"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert not (tmp_path / "x.ilc").exists()
    r = cli.invoke(app, ["compress", str(src), "-o", str(tmp_path / "y.ilc"), "--refine", "-1"])
    assert r.exit_code == 2 and not (tmp_path / "y.ilc").exists()


def test_refine_latents_ignores_what_lies_outside_valid(tiny_ckpt):
    from ilc_reference.checkpoint import load_model
    from ilc_reference.refine import refine_latents

    m = load_model(tiny_ckpt).eval()
    x = torch.from_numpy(_img(3).transpose(2, 0, 1)[None].astype(np.float32) / 255)
    with torch.no_grad():
        y, _ = m.analysis(x)
        w_hat = torch.round(m.h_a(y))
    other = x.clone()
    other[..., 40:, :] = 1.0 - other[..., 40:, :]  # different "padding" below row 40
    other[..., 100:] = 0.0  # and right of column 100
    a = refine_latents(m, x, y, w_hat, iters=4, lr=0.01, valid=(40, 100))
    b = refine_latents(m, other, y, w_hat, iters=4, lr=0.01, valid=(40, 100))
    assert torch.equal(a, b)
    assert not torch.equal(refine_latents(m, other, y, w_hat, iters=4, lr=0.01), a)  # the padding counted


def test_refinement_measures_distortion_inside_the_image_only(tiny_ckpt):
    """Each tile is refined over its part of the image, not its edge-replicated padding."""
    torch.set_num_threads(1)
    runner = load_backend("torch", tiny_ckpt, refine=1, refine_lr=0.01)
    seen, refine_fn = [], runner.refine_fn

    def spy(model, x, y, w_hat, valid=None):
        seen.append((tuple(x.shape[2:]), valid))
        return refine_fn(model, x, y, w_hat, valid=valid)

    runner.refine_fn = spy
    codec = ImageCodec(runner)
    img = _img(4, 72, 104)[:, :100].copy()  # padded to 128 x 128
    codec.compress(img, tile=0)
    assert seen == [((128, 128), (72, 100))]
    seen.clear()
    codec.compress(img, tile=64)  # four 64 x 64 tiles, raster order
    assert seen == [((64, 64), (64, 64)), ((64, 64), (64, 36)), ((64, 64), (8, 64)), ((64, 64), (8, 36))]


def test_refining_runner_is_refused_on_the_host_path(tiny_ckpt):
    """The host path runs the graphs only: it would encode a refining runner's tiles unrefined."""
    from ilc_export.contract.errors import IlcError

    refining = load_backend("torch", tiny_ckpt, refine=2)
    assert refining.refines and ImageCodec(refining).fused
    with pytest.raises(IlcError, match="refine") as e:
        ImageCodec(refining, fused=False)
    assert "\n" not in str(e.value)
    plain = load_backend("torch", tiny_ckpt)
    assert not plain.refines and not ImageCodec(plain, fused=False).fused
