"""The TensorRT backend: refusals tested on CPU; engine execution only where a suitable GPU is.

Nothing here can execute an engine on the development/CI machines (no GPU); the lent GPU is a
Hopper (SM90), where TensorRT-RTX engines do not run. Those tests skip and say why.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ilc_export.backends import BackendError, load_backend
from ilc_export.backends.tensorrt.loader import check_engine_compat, read_engine_manifest
from ilc_export.backends.tensorrt.runner import check_profile
from ilc_export.backends.tensorrt import cuda_probe

MAN = {"format": "ilc-trt-engines", "format_version": 1, "flavour": "tensorrt_rtx", "trt_version": "1.7.1.116",
       "compute_capabilities": ["SM86", "SM89"], "profile": {"min": [1, 64, 64], "opt": [1, 1088, 1920],
                                                             "max": [1, 2176, 3840]}}


def test_refuses_other_tensorrt_version():
    with pytest.raises(BackendError, match="built with tensorrt_rtx 1.7.1.116; this machine has tensorrt_rtx 1.8.0"):
        check_engine_compat(MAN, "tensorrt_rtx", "1.8.0", "SM86")


def test_refuses_other_flavour_and_missing_runtime():
    with pytest.raises(BackendError, match="this machine has tensorrt 10.3"):
        check_engine_compat(MAN, "tensorrt", "10.3.0", "SM87")
    with pytest.raises(BackendError, match="not installed here; install tensorrt-rtx-cu12"):
        check_engine_compat(MAN, None, None, "SM86")


def test_refuses_other_gpu():
    with pytest.raises(BackendError, match=r"built for compute capability SM86, SM89; this GPU is NVIDIA T4 \(SM75\)"
                                           r".*--compute-capability SM75"):
        check_engine_compat(MAN, "tensorrt_rtx", "1.7.1.116", "SM75", "NVIDIA T4")
    with pytest.raises(BackendError, match="do not run on data-centre GPUs"):
        check_engine_compat(MAN, "tensorrt_rtx", "1.7.1.116", "SM90", "NVIDIA H100")
    jetson = {**MAN, "flavour": "tensorrt", "trt_version": "10.3.0", "compute_capabilities": ["SM87"]}
    with pytest.raises(BackendError, match="rebuild them on this machine"):
        check_engine_compat(jetson, "tensorrt", "10.3.0", "SM72")
    check_engine_compat(jetson, "tensorrt", "10.3.0", "SM87")  # fine
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        check_engine_compat(MAN, "tensorrt_rtx", "1.7.1.116", None)


def test_refuses_images_outside_the_profile():
    prof = {"image": ((1, 3, 64, 64), (1, 3, 1088, 1920), (1, 3, 2176, 3840))}
    check_profile("forward", {"image": np.zeros((1, 3, 64, 128), np.float32)}, prof, MAN["profile"])
    with pytest.raises(BackendError) as ei:
        check_profile("forward", {"image": np.zeros((1, 3, 4352, 64), np.float32)}, prof, MAN["profile"])
    msg = str(ei.value)
    assert "1x3x4352x64 is outside the engine profile (BxHxW) min 1x64x64, opt 1x1088x1920, max 1x2176x3840" in msg
    assert "--max-shape" in msg
    with pytest.raises(BackendError, match="has 4 channels; the engine takes 3"):
        check_profile("forward", {"image": np.zeros((1, 4, 64, 64), np.float32)}, prof, MAN["profile"])
    with pytest.raises(BackendError, match="outside"):
        check_profile("forward", {"image": np.zeros((2, 3, 64, 64), np.float32)}, prof, MAN["profile"])


def _engine_folder(tmp_path, **over):
    d = tmp_path / "eng"
    d.mkdir(parents=True)
    engines = {}
    for g in ("forward", "hyper_mean", "inverse"):
        (d / f"{g}.engine").write_bytes(b"not really an engine")
        engines[g] = {"file": f"{g}.engine", "sha256": "0" * 64}
    m = {**MAN, "engines": engines, **over}
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_not_an_engine_folder(tmp_path):
    (tmp_path / "forward.onnx").write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "ilc-onnx-export"}))
    with pytest.raises(BackendError, match="ONNX export: use --backend onnxruntime"):
        read_engine_manifest(tmp_path)
    with pytest.raises(BackendError, match="manifest.json missing"):
        read_engine_manifest(tmp_path / "nothing")
    with pytest.raises(BackendError, match="newer than this ilc-export"):
        read_engine_manifest(_engine_folder(tmp_path, format_version=9))


def test_load_refuses_before_deserialising(tmp_path, monkeypatch):
    """Version, GPU and file checks happen before TensorRT sees the bytes (these are not engines)."""
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu12 not installed")
    d = _engine_folder(tmp_path, trt_version=trt.__version__)
    if cuda_probe.compute_capability(0) is None:
        with pytest.raises(BackendError, match="needs a CUDA GPU and none was found"):
            load_backend("tensorrt", d)
    monkeypatch.setattr(cuda_probe, "compute_capability", lambda device=0: "SM86")
    with pytest.raises(BackendError, match="does not match its manifest"):
        load_backend("trt", d)
    old = _engine_folder(tmp_path / "old", trt_version="1.0.0.0")
    with pytest.raises(BackendError, match="load only in the TensorRT version that built them"):
        load_backend("trt", old)


def test_backend_import_does_not_import_torch(tmp_path):
    d = _engine_folder(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        from ilc_export.backends import BackendError, load_backend
        try:
            load_backend("tensorrt", {str(d)!r})
        except BackendError as e:
            print("refused:", e)
        assert "torch" not in sys.modules, "torch was imported"
    """)
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout


# --------------------------------------------------------------------------- execution (GPU only)
def _execution_skip_reason() -> str | None:
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        try:
            import tensorrt
        except ImportError:
            return "no TensorRT installed"
    cc = cuda_probe.compute_capability(0)
    if cc is None:
        return "no CUDA GPU here: TensorRT engine execution is not tested on this machine"
    if cc in ("SM90", "SM100", "SM103"):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return f"the GPU is {cc}: TensorRT-RTX engines do not run there and full TensorRT is not installed"
    try:
        import cuda.bindings.runtime  # noqa: F401
    except ImportError:
        try:
            import torch

            if not torch.cuda.is_available():
                return "neither cuda-python nor torch with CUDA for device buffers"
        except ImportError:
            return "neither cuda-python nor torch with CUDA for device buffers"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_execution_skip_reason() is not None, reason=str(_execution_skip_reason()))
@pytest.mark.parametrize("fp16", [False, True])
def test_engines_match_onnxruntime(tmp_path, fp16):
    pytest.importorskip("torch")
    from trt_testutil import export_tiny

    from ilc_export.export.trt_build import build_engines
    from ilc_export.backends.tensorrt.flavour import detect

    cc = cuda_probe.compute_capability(0)
    exp = export_tiny(tmp_path)
    ccs = [cc] if detect().supports_target_cc else None
    build_engines(exp, tmp_path / "trt", fp16=fp16, min_shape="64x64", opt_shape="128x192", max_shape="2x256x256",
                  compute_capabilities=ccs, progress=False)
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 128, 192), dtype=np.float32)
    with load_backend("onnxruntime", exp) as ort_r, load_backend("tensorrt", tmp_path / "trt") as trt_r:
        a = ort_r.run("forward", {"image": x})
        b = trt_r.run("forward", {"image": x})
        tol = 5e-2 if fp16 else 2e-3
        for k in a:
            assert a[k].shape == b[k].shape and np.abs(a[k] - b[k]).max() < tol, k
        w_hat = np.round(a["w"])
        mu_a = ort_r.run("hyper_mean", {"w_hat": w_hat})["mu"]
        mu_b = trt_r.run("hyper_mean", {"w_hat": w_hat})["mu"]
        assert np.abs(mu_a - mu_b).max() < 2e-3  # fp32 in both precisions
        y_hat = np.round(a["y"] - mu_a) + mu_a
        ia = ort_r.run("inverse", {"y_hat": y_hat, "z": np.zeros_like(a["z"])})["image"]
        ib = trt_r.run("inverse", {"y_hat": y_hat, "z": np.zeros_like(a["z"])})["image"]
        assert np.abs(ia - ib).max() < tol
        # the verifier's runner-vs-runner parity takes TensorRT as it takes ONNX Runtime
        from ilc_export.verify.parity import DEFAULT_TOLERANCES, compare_runners

        img = (rng.random((128, 192, 3)) * 255).astype(np.uint8)
        rep = compare_runners(ort_r, trt_r, [("noise", img)], DEFAULT_TOLERANCES["fp16" if fp16 else "fp32"])
        assert rep["reconstruction_pass"], rep["reconstruction"]
        with pytest.raises(BackendError, match="outside the engine profile"):
            trt_r.run("forward", {"image": np.zeros((1, 3, 512, 64), np.float32)})

