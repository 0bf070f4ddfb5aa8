import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ilc_reference.config import PAD_MULTIPLE, ModelConfig, latent_shape, padded_size, tiny_config
from ilc_reference.invertible import Haar
from ilc_reference.model import build_model
from ilc_reference.zsample import surrogate_z

from conftest import ROOT, randomize


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 128, 192)])
def test_ilc_is_invertible(shape):
    torch.manual_seed(0)
    model = randomize(build_model(tiny_config()), scale=0.1).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        y, z = model.analysis(x)
        assert y.shape[1] == model.cfg.latent_channels and z.shape[1] == model.cfg.z_channels
        err = (model.synthesis(y, z) - x).abs().max().item()
    assert err < 1e-4


def test_haar_is_orthonormal_and_exact():
    h = Haar(3)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float32)
    y = h(x)
    assert y.shape == (1, 12, 4, 4)
    assert torch.allclose(h.inverse(y), x, atol=1e-6)
    assert torch.allclose((y**2).sum(), (x**2).sum(), rtol=1e-5)  # energy preserved
    # low-frequency band first: LL of a constant image carries everything
    c = h(torch.ones(1, 3, 4, 4))
    assert torch.all(c[:, 3:] == 0) and torch.allclose(c[:, :3], torch.full((1, 3, 2, 2), 2.0))


def test_shapes_from_config():
    cfg = tiny_config()
    assert PAD_MULTIPLE == 64
    assert padded_size(769, 513) == (832, 576)
    s = latent_shape(cfg, 128, 192)
    assert s["y"] == (16, 8, 12) and s["z"] == (768 - 16, 8, 12) and s["w"] == (8, 2, 3)
    with pytest.raises(ValueError):
        latent_shape(cfg, 100, 128)


def test_config_roundtrip_and_unknown_keys():
    cfg = ModelConfig(latent_channels=32)
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"nope": 1})


@pytest.mark.parametrize("kind", ["ilc", "baseline"])
def test_training_step_reduces_loss(kind):
    torch.manual_seed(0)
    model = build_model(tiny_config(kind)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 64, 64)
    losses = []
    for _ in range(15):
        out = model(x)
        loss, stats = model.loss(x, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["loss"])
    assert losses[-1] < losses[0]


def test_surrogate_z_is_seeded():
    a = surrogate_z((1, 4, 3, 3), seed=7, temperature=0.5)
    b = surrogate_z((1, 4, 3, 3), seed=7, temperature=0.5)
    assert np.array_equal(a, b) and a.std() > 0
    assert not np.any(surrogate_z((1, 4, 3, 3)))


def _train(tmp_path, data, steps, extra=()):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({k: v for k, v in json.loads(tiny_config().to_json()).items() if k not in ("name", "kind")}))
    cmd = [sys.executable, "-m", "ilc_reference.train", "--data", str(data), "--out", str(tmp_path / "run"),
           "--config", str(cfg), "--steps", str(steps), "--batch", "2", "--crop", "64", "--ckpt-every", "2", "--pixels", "0",
           "--threads", "1", "--quiet", *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)


def test_training_resumes_exactly(tmp_path):
    from PIL import Image
    from safetensors.torch import load_file

    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(data / f"{i}.png")
    straight = tmp_path / "a"
    straight.mkdir()
    _train(straight, data, 4)
    resumed = tmp_path / "b"
    resumed.mkdir()
    _train(resumed, data, 2)
    _train(resumed, data, 4)
    wa = load_file(str(straight / "run" / "model.safetensors"))
    wb = load_file(str(resumed / "run" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    log = [json.loads(l) for l in (resumed / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_reference_eval_helpers(tmp_path):
    """The model-card numbers: estimated rate and invertibility, from one loaded model."""
    from PIL import Image

    from ilc_export.verify.reference_eval import evaluate_reference, invertibility_error

    rng = np.random.default_rng(3)
    f = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(f)
    torch.manual_seed(0)
    ilc = randomize(build_model(tiny_config()), scale=0.1).eval()
    r = evaluate_reference(ilc, [f, f])
    assert len(r["per_image"]) == 2 and r["bpp"] > 0 and 0 < r["psnr"] < 100 and 0 < r["ms_ssim"] <= 1
    assert invertibility_error(ilc, f) < 1e-4
    # dropping z costs quality the rounded latents cannot get back: the ceiling is finite and
    # above the quantised reconstruction of the same image
    assert r["psnr"] - 1.0 < r["z_zero_ceiling_psnr"] < 100
    assert evaluate_reference(build_model(tiny_config(kind="baseline")).eval(), [f])["z_zero_ceiling_psnr"] is None
    # with an encoder add-on: a zero correction leaves the ceiling where it is, a random one moves it
    from ilc_reference.encoder_addon import LatentCorrection

    cfg = ilc.cfg
    assert r["addon_ceiling_psnr"] is None
    zero = LatentCorrection(cfg.latent_channels, cfg.z_channels, hidden=8).eval()
    assert evaluate_reference(ilc, [f], correction=zero)["addon_ceiling_psnr"] == pytest.approx(r["z_zero_ceiling_psnr"])
    moved = randomize(LatentCorrection(cfg.latent_channels, cfg.z_channels, hidden=8), 0.1).eval()
    assert evaluate_reference(ilc, [f], correction=moved)["addon_ceiling_psnr"] != pytest.approx(r["z_zero_ceiling_psnr"])
    with pytest.raises(ValueError, match="not invertible"):
        invertibility_error(build_model(tiny_config(kind="baseline")).eval(), f)
