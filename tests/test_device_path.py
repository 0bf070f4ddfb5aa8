"""Device-resident coding (FUSED_TILES): the fused path writes the very files the per-graph
host path writes and decodes them to the same pixels, on torch and on ONNX Runtime (IO
binding); device / provider options fail with one clear line."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from ilc_export.backends import FUSED_TILES, BackendError, load_backend
from ilc_export.pipeline.codec import ImageCodec

cli = CliRunner()
GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA device in this torch build / machine")

# tiled (tile 64 on a 130x200 image: several tiles, edge tiles replicated) and untiled
CASES = [((130, 200), 64), ((96, 160), 0)]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    from conftest import SAMPLE
    from PIL import Image

    photo = np.asarray(Image.open(SAMPLE).convert("RGB"))
    return {s: photo[:s[0], :s[1]].copy() for s, _ in CASES} | {"noise": rng.integers(0, 256, (70, 90, 3), np.uint8)}


@pytest.fixture(scope="module")
def export_dir(tiny_ckpt, tmp_path_factory):
    from ilc_export.export.onnx_export import export_onnx

    torch.set_num_threads(1)
    return export_onnx(tiny_ckpt, tmp_path_factory.mktemp("dev-export") / "export", fp16=False)


def _pair(runner):
    return ImageCodec(runner, fused=True), ImageCodec(runner, fused=False)


def _check_identical(fused, host, images):
    for (size, tile) in CASES:
        img = images[size]
        a, _ = fused.compress(img, tile=tile)
        b, _ = host.compress(img, tile=tile)
        assert a == b, f"fused and host paths wrote different files for {size}, tile {tile}"
        ra, rb = fused.decompress(a)[0], host.decompress(b)[0]
        assert np.array_equal(ra, rb)
    # seeded z: drawn on the host, copied once; same pixels either way
    a, _ = fused.compress(images["noise"], z_seed=3, z_temperature=0.5)
    assert a == host.compress(images["noise"], z_seed=3, z_temperature=0.5)[0]
    assert np.array_equal(fused.decompress(a)[0], host.decompress(a)[0])


def test_torch_declares_fused_and_codec_uses_it(tiny_ckpt):
    r = load_backend("torch", tiny_ckpt, device="cpu")
    assert FUSED_TILES in r.capabilities and r.device == "cpu"
    assert ImageCodec(r).fused
    assert not ImageCodec(r, fused=False).fused


def test_torch_fused_cpu_byte_identical_to_host_path(tiny_ckpt, images):
    _check_identical(*_pair(load_backend("torch", tiny_ckpt, device="cpu", threads=1)), images)


def test_ort_iobinding_byte_identical_to_plain_path(export_dir, images):
    r = load_backend("onnxruntime", export_dir, threads=1, providers="cpu")
    assert FUSED_TILES in r.capabilities and r.device == "CPUExecutionProvider"
    _check_identical(*_pair(r), images)


def test_files_cross_backends_and_paths(tiny_ckpt, export_dir, images):
    """A file the torch fused path writes decodes on ONNX Runtime (either path) and vice versa."""
    t = ImageCodec(load_backend("torch", tiny_ckpt, threads=1))
    o = load_backend("onnxruntime", export_dir, threads=1)
    img = images[(130, 200)]
    data, _ = t.compress(img, tile=64)
    a = ImageCodec(o, fused=True).decompress(data)[0]
    b = ImageCodec(o, fused=False).decompress(data)[0]
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - t.decompress(data)[0].astype(int)).max() <= 2
    data2, _ = ImageCodec(o).compress(img, tile=64)
    assert t.decompress(data2)[0].shape == img.shape


def test_runner_without_capability_refuses_fused(export_dir):
    r = load_backend("onnxruntime", export_dir, threads=1)
    r.capabilities = frozenset()  # a runner that declares nothing beyond run()
    assert not ImageCodec(r).fused
    with pytest.raises(ValueError, match=FUSED_TILES):
        ImageCodec(r, fused=True)


@pytest.mark.parametrize("device, msg", [
    ("tpu", "unknown device 'tpu'; use cpu, cuda or cuda:N"),
    ("cuda:x", "unknown device"),
    ("cpu:1", "unknown device"),
])
def test_unknown_device(tiny_ckpt, device, msg):
    with pytest.raises(BackendError, match=msg.replace("(", r"\(")):
        load_backend("torch", tiny_ckpt, device=device)


@pytest.mark.skipif(GPU, reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tiny_ckpt):
    with pytest.raises(BackendError) as e:
        load_backend("torch", tiny_ckpt, device="cuda")
    msg = str(e.value)
    assert "\n" not in msg and "use --device cpu" in msg
    if torch.version.cuda is None:
        assert msg == f"CUDA is not available in this torch build (torch {torch.__version__}, CPU-only); use --device cpu"


def test_fp16_needs_cuda(tiny_ckpt):
    with pytest.raises(BackendError, match="fp16 on the torch backend needs a CUDA device"):
        load_backend("torch", tiny_ckpt, device="cpu", precision="fp16")


def test_provider_errors(export_dir):
    import onnxruntime as ort

    missing = [p for p in ("cuda", "tensorrt") if {"cuda": "CUDAExecutionProvider",
                                                   "tensorrt": "TensorrtExecutionProvider"}[p]
               not in ort.get_available_providers()]
    for p in missing:
        with pytest.raises(BackendError, match=r"lacks .*ExecutionProvider .*use --provider cpu"):
            load_backend("onnxruntime", export_dir, providers=p)
    with pytest.raises(BackendError, match="unknown execution provider 'gpu'"):
        load_backend("onnxruntime", export_dir, providers="gpu")
    with pytest.raises(BackendError, match="only cuda:N and tensorrt:N"):
        load_backend("onnxruntime", export_dir, providers="cpu:1")
    with pytest.raises(BackendError, match="--device cuda is for the torch backend"):
        load_backend("onnxruntime", export_dir, device="cuda")


def test_cli_device_and_provider(tiny_ckpt, export_dir, tmp_path, images):
    from PIL import Image

    from ilc_export.cli.run_cli import app

    src = tmp_path / "a.png"
    Image.fromarray(images["noise"]).save(src)
    r = cli.invoke(app, ["compress", str(src), "-m", str(tiny_ckpt), "--device", "cpu", "-o", str(tmp_path / "a.ilc")])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["decompress", str(tmp_path / "a.ilc"), "-m", str(export_dir), "--ep", "cpu",
                         "-o", str(tmp_path / "a.png.out.png")])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["compress", str(src), "-m", str(tiny_ckpt), "--device", "tpu", "-o", str(tmp_path / "b.ilc")])
    assert r.exit_code == 1 and "unknown device 'tpu'" in r.output
    assert "Traceback" not in r.output
    r = cli.invoke(app, ["demo", str(src), "-m", str(export_dir), "--provider", "gpu", "-o", str(tmp_path / "d")])
    assert r.exit_code == 1 and "unknown execution provider 'gpu'" in r.output
    if not GPU:
        r = cli.invoke(app, ["compress", str(src), "-m", str(tiny_ckpt), "--device", "cuda", "-o",
                             str(tmp_path / "c.ilc")])
        assert r.exit_code == 1 and "use --device cpu" in r.output
        assert not (tmp_path / "c.ilc").exists()


@needs_gpu
def test_cuda_fused_identical_to_cuda_host_path_and_decodes_on_cpu(tiny_ckpt, images):
    gpu = load_backend("torch", tiny_ckpt, device="cuda")
    _check_identical(*_pair(gpu), images)
    data, _ = ImageCodec(gpu).compress(images[(130, 200)], tile=64)
    cpu = ImageCodec(load_backend("torch", tiny_ckpt, device="cpu"))
    a, b = cpu.decompress(data)[0], ImageCodec(gpu).decompress(data)[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


@needs_gpu
def test_cuda_fp16_files_decode_on_cpu(tiny_ckpt, images):
    gpu = ImageCodec(load_backend("torch", tiny_ckpt, device="cuda", precision="fp16"))
    img = images[(130, 200)]
    data, _ = gpu.compress(img, tile=64)
    cpu = ImageCodec(load_backend("torch", tiny_ckpt, device="cpu"))
    assert cpu.decompress(data)[0].shape == img.shape
    assert gpu.decompress(data)[0].shape == img.shape


def test_verify_device_and_provider(export_dir, tmp_path):
    from ilc_export.cli.export_cli import app as export_app

    out = tmp_path / "rep.json"
    r = cli.invoke(export_app, ["verify", str(export_dir), "-p", "fp32", "--device", "cpu", "--provider", "cpu",
                                "--json", str(out)])
    assert r.exit_code == 0, r.output
    import json

    rep = json.loads(out.read_text())
    assert rep["torch_device"] == "cpu" and rep["precisions"]["fp32"]["providers"] == ["CPUExecutionProvider"]
    r = cli.invoke(export_app, ["verify", str(export_dir), "-p", "fp32", "--device", "tpu"])
    assert r.exit_code == 1 and "unknown device 'tpu'" in r.output and "Traceback" not in r.output
    r = cli.invoke(export_app, ["verify", str(export_dir), "-p", "fp32", "--ep", "nope"])
    assert r.exit_code == 1 and "unknown execution provider 'nope'" in r.output
