"""ONNX Runtime backend and parity: outputs vs torch, dynamic shapes, fp16, integrity, no torch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from test_onnx_fixtures import tiny_export

from ilc_export.backends import BackendError, load_backend
from ilc_export.backends.onnxrt.loader import load as load_ort


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return tiny_export(tmp_path_factory, "ilc")


@pytest.fixture(scope="module")
def model(exported):
    from ilc_reference.checkpoint import load_model

    torch.set_num_threads(1)
    return load_model(exported[0])


def _torch_graphs(model, x):
    with torch.inference_mode():
        y, z = model.analysis(torch.from_numpy(x))
        w = model.h_a(y)
        w_hat = torch.round(w)
        mu = model.hyper_mean(w_hat)
        y_hat = torch.round(y - mu) + mu
        img = model.synthesis(y_hat, z)
    return {"y": y.numpy(), "z": z.numpy(), "w": w.numpy(), "w_hat": w_hat.numpy(), "mu": mu.numpy(),
            "y_hat": y_hat.numpy(), "image": img.numpy()}


# batch 1 at the minimum size, a non-square size and batch 2: none is the 128x128 export trace size
SHAPES = [(1, 64, 64), (1, 128, 192), (2, 64, 128)]


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-4), ("fp16", 5e-2)])
def test_ort_matches_torch_on_unseen_shapes(exported, model, precision, atol):
    _, folder = exported
    runner = load_ort(folder, threads=1, precision=precision)
    assert runner.name == "onnxruntime" and runner.config.latent_channels == 16
    rng = np.random.default_rng(1)
    for b, h, w in SHAPES:
        x = rng.random((b, 3, h, w), dtype=np.float32)
        ref = _torch_graphs(model, x)
        got = runner.run("forward", {"image": x})
        assert got["y"].shape == (b, 16, h // 16, w // 16) and got["w"].shape == (b, 8, h // 64, w // 64)
        for k in ("y", "z", "w"):
            assert np.isfinite(got[k]).all()
            np.testing.assert_allclose(got[k], ref[k], atol=atol, rtol=0, err_msg=f"{precision} {k} {x.shape}")
        mu = runner.run("hyper_mean", {"w_hat": ref["w_hat"]})["mu"]
        np.testing.assert_allclose(mu, ref["mu"], atol=1e-4, rtol=0)  # hyper_mean is fp32 in both
        img = runner.run("inverse", {"y_hat": ref["y_hat"], "z": ref["z"]})["image"]
        assert img.shape == x.shape and np.isfinite(img).all()
        np.testing.assert_allclose(img, ref["image"], atol=atol, rtol=0)
    runner.close()


def test_registry_and_tables(exported):
    ckpt, folder = exported
    with load_backend("ort", folder, threads=1) as r:
        assert r.model_id == json.loads((folder / "manifest.json").read_text())["model_id"]
        assert r.tables_path() == folder / "tables.safetensors" and r.tables_path().exists()
        with pytest.raises(BackendError, match="takes inputs"):
            r.run("inverse", {"y_hat": np.zeros((1, 16, 4, 4), np.float32)})
    with pytest.raises(BackendError, match="export folder"):
        load_ort(ckpt)


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_corrupted_graph_is_named(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    p = folder / "inverse.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BackendError, match=r"inverse\.onnx.*sha256"):
        load_ort(folder)
    p.write_bytes(bytes(data[:-10]))
    with pytest.raises(BackendError, match=r"inverse\.onnx.*size"):
        load_ort(folder)


def test_manifest_mismatch_and_damage(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    mpath = folder / "manifest.json"
    good = json.loads(mpath.read_text())
    bad = json.loads(mpath.read_text())
    bad["files"]["forward.onnx"]["sha256"] = "0" * 64
    mpath.write_text(json.dumps(bad))
    with pytest.raises(BackendError, match=r"forward\.onnx.*does not match the manifest"):
        load_ort(folder)
    bad = dict(good, format_version=99)
    mpath.write_text(json.dumps(bad))
    with pytest.raises(BackendError, match="newer"):
        load_ort(folder)
    mpath.write_text("{not json")
    with pytest.raises(BackendError, match="unreadable manifest"):
        load_ort(folder)
    mpath.unlink()
    with pytest.raises(BackendError, match="no manifest.json"):
        load_ort(folder)
    mpath.write_text(json.dumps(good))
    with pytest.raises(BackendError, match="no fp16"):
        # an export without fp16 graphs: drop them from the manifest
        g = dict(good, precisions={"fp32": good["precisions"]["fp32"]})
        mpath.write_text(json.dumps(g))
        load_ort(folder, precision="fp16")


def test_ort_backend_does_not_import_torch(exported):
    _, folder = exported
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any torch import now fails loudly
        import numpy as np
        from ilc_export.backends import load_backend
        r = load_backend("onnxruntime", {str(folder)!r}, threads=1)
        out = r.run("forward", {{"image": np.zeros((1, 3, 64, 64), np.float32)}})
        mu = r.run("hyper_mean", {{"w_hat": np.round(out["w"])}})["mu"]
        img = r.run("inverse", {{"y_hat": np.round(out["y"] - mu) + mu, "z": np.zeros_like(out["z"])}})["image"]
        assert img.shape == (1, 3, 64, 64)
        assert sys.modules.get("torch") is None
        assert not any(m.startswith("torch.") for m in sys.modules), [m for m in sys.modules if m.startswith("torch")]
        print("ok")
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_verify_export_report(exported):
    from ilc_export.verify.parity import format_report, verify_export

    ckpt, folder = exported
    img = (np.random.default_rng(3).random((70, 100, 3)) * 255).astype(np.uint8)  # padded to 128x128
    rep = verify_export(folder, images=[img], threads=1)
    assert rep["pass"], format_report(rep)
    for prec in ("fp32", "fp16"):
        p = rep["precisions"][prec]
        assert set(p["graphs"]) == {"forward", "hyper_mean", "inverse"}
        assert p["graphs"]["forward"]["y"]["max_abs"] < (1e-4 if prec == "fp32" else 5e-2)
        assert p["psnr_vs_torch_min"] >= (50 if prec == "fp32" else 35)
    assert rep["precisions"]["fp32"]["graphs"]["inverse"]["image"]["mean_abs"] < 1e-5
    assert "PASS" in format_report(rep)
    json.dumps(rep)  # JSON-serialisable


def test_compare_runners_any_two_backends(exported):
    """Parity is runner vs runner: ONNX Runtime fp16 against ONNX Runtime fp32 (as TensorRT
    against ONNX Runtime), and a runner against itself is exact."""
    from ilc_export.verify.parity import DEFAULT_TOLERANCES, PSNR_CAP, compare_runners

    img = (np.random.default_rng(4).random((64, 96, 3)) * 255).astype(np.uint8)
    with load_ort(exported[1], threads=1) as fp32, load_ort(exported[1], threads=1, precision="fp16") as fp16:
        same = compare_runners(fp32, fp32, [("noise", img)], DEFAULT_TOLERANCES["fp32"])
        assert same["pass"] and same["reconstruction"][0]["psnr_vs_torch"] == PSNR_CAP
        assert same["graphs"]["forward"]["y"]["max_abs"] == 0.0
        half = compare_runners(fp32, fp16, [("noise", img)], DEFAULT_TOLERANCES["fp16"])
        assert half["pass"] and 0 < half["graphs"]["forward"]["y"]["max_abs"] < 5e-2


def test_verify_rejects_other_checkpoint(exported, tmp_path):
    from test_onnx_fixtures import tiny_checkpoint

    from ilc_export.verify.parity import VerifyError, verify_export

    other = tiny_checkpoint(tmp_path, "ilc", seed=5)
    with pytest.raises(VerifyError, match="not the checkpoint"):
        verify_export(exported[1], ckpt=other, precisions=("fp32",))


def test_cli_verify(exported, tmp_path):
    from typer.testing import CliRunner

    from ilc_export.cli.export_cli import app

    out = tmp_path / "rep.json"
    res = CliRunner().invoke(app, ["verify", str(exported[1]), "-p", "fp32", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output and json.loads(out.read_text())["pass"]
