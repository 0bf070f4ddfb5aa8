"""Image -> file -> image through the torch backend with a tiny model; CLI error handling."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ilc_export.cli.run_cli import app
from ilc_export.codec.errors import BitstreamError
from ilc_export.pipeline.api import expand_inputs, open_codec
from ilc_export.pipeline.image_io import ImageError, load_rgb

from conftest import ROOT

runner = CliRunner()


@pytest.mark.parametrize("size", [(1, 1), (64, 64), (77, 130), (513, 49), (1, 4000), (4000, 1), (2, 65)])
def test_round_trip_any_size(codec, size):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    data, st = codec.compress(img)
    rec, st2 = codec.decompress(data)
    assert rec.shape == img.shape and rec.dtype == np.uint8
    assert st.bpp == pytest.approx(8 * len(data) / (size[0] * size[1]))
    # decoding twice gives the same image (deterministic decoder)
    assert np.array_equal(codec.decompress(data)[0], rec)


def test_same_input_same_bytes(codec, sample_image):
    img = sample_image[:128, :192]
    assert codec.compress(img)[0] == codec.compress(img)[0]


def test_seeded_z_is_reproducible_and_recorded(codec, sample_image):
    img = sample_image[:64, :64]
    d0, _ = codec.compress(img)
    d1, _ = codec.compress(img, z_seed=5, z_temperature=0.5)
    r0, r1 = codec.decompress(d0)[0], codec.decompress(d1)[0]
    assert np.array_equal(codec.decompress(d1)[0], r1)
    assert not np.array_equal(r0, r1)  # the seed changes the decoded image


def test_wrong_model_is_refused(codec, tiny_ckpt, tmp_path, sample_image):
    import torch

    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_reference.checkpoint import load_model, save_checkpoint

    m = load_model(tiny_ckpt)
    with torch.no_grad():
        next(m.parameters()).add_(0.01)
    other = save_checkpoint(m, tmp_path / "other")
    finalize_checkpoint(other)
    data, _ = open_codec(other, backend="torch").compress(sample_image[:64, :64])
    with pytest.raises(BitstreamError, match="model"):
        codec.decompress(data)


def test_image_policies(tmp_path):
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (5, 4), (10, 20, 30, 40)).save(rgba)
    arr, notes = load_rgb(rgba)
    assert arr.shape == (4, 5, 3) and any("alpha" in n for n in notes)
    g16 = tmp_path / "g16.png"
    Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16)).save(g16)
    arr, _ = load_rgb(g16)
    assert arr.shape == (3, 3, 3) and arr.max() == 255
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(cmyk)
    assert load_rgb(cmyk)[0].shape == (8, 8, 3)
    pal = tmp_path / "p.png"
    Image.new("P", (6, 2)).save(pal)
    assert load_rgb(pal)[0].shape == (2, 6, 3)
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_rgb(empty)
    junk = tmp_path / "j.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(junk)
    trunc = tmp_path / "t.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:60])
    with pytest.raises(ImageError):
        load_rgb(trunc)


@pytest.mark.parametrize("orientation,turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                               (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_honoured(tmp_path, orientation, turn):
    """The image is coded as displayed: every pixel lands where the orientation tag puts it."""
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)  # 20 wide, 10 high, every pixel distinct enough
    p = tmp_path / "r.png"  # lossless, so the pixels can be compared exactly
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: rotate 90 CW on display, 8: 90 CCW, 3: 180, 2: mirror
    Image.fromarray(stored).save(p, exif=exif)
    got = load_rgb(p)[0]
    want = turn(stored)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if orientation in (6, 8):
        assert got.shape == (20, 10, 3)


def test_cli_compress_decompress_and_errors(tiny_ckpt, tmp_path, sample_image):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(sample_image[:70, :90]).save(src / "a.png")
    Image.fromarray(sample_image[:64, :64]).save(src / "b.jpg")
    (src / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "bits"
    r = runner.invoke(app, ["compress", str(src), "-o", str(out), "--model", str(tiny_ckpt)])
    assert r.exit_code == 1 and "bad.png" in r.output  # one bad file is reported ...
    assert sorted(p.name for p in out.iterdir()) == ["a.ilc", "b.ilc"]  # ... the others finish
    dec = tmp_path / "dec"
    r = runner.invoke(app, ["decompress", str(out), "-o", str(dec), "--model", str(tiny_ckpt)])
    assert r.exit_code == 0, r.output
    assert Image.open(dec / "a.png").size == (90, 70)
    # hostile bitstreams: one-line error, non-zero exit, no traceback
    data = (out / "a.ilc").read_bytes()
    cases = {"empty": b"", "trunc": data[: len(data) // 2], "flip": data[:20] + bytes([data[20] ^ 1]) + data[21:],
             "future": data[:4] + bytes([99]) + data[5:]}
    for name, blob in cases.items():
        f = tmp_path / f"{name}.ilc"
        f.write_bytes(blob)
        r = runner.invoke(app, ["decompress", str(f), "-o", str(tmp_path / f"{name}.png"), "--model", str(tiny_ckpt)])
        assert r.exit_code != 0, name
        assert "Traceback" not in r.output and "error" in r.output, (name, r.output)
        assert not (tmp_path / f"{name}.png").exists()


def test_expand_inputs_globs(tmp_path):
    for n in ["x.png", "y.png", "z.txt"]:
        (tmp_path / n).write_bytes(b"")
    assert [p.name for p in expand_inputs([str(tmp_path / "*.png")], None)] == ["x.png", "y.png"]
    assert [p.name for p in expand_inputs([tmp_path], {".png"})] == ["x.png", "y.png"]


def test_onnxruntime_path_does_not_import_torch():
    code = (
        "import sys; import ilc_export.pipeline.api, ilc_export.backends.onnxrt.runner, ilc_export.codec.entropy, "
        "ilc_export.cli.run_cli; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_lab_and_animated_inputs(tmp_path):
    from PIL import ImageCms

    rgb = Image.new("RGB", (8, 8), (200, 30, 40))
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    ImageCms.applyTransform(rgb, to_lab).save(tmp_path / "lab.tif")
    arr, notes = load_rgb(tmp_path / "lab.tif")
    assert np.abs(arr[0, 0].astype(int) - [200, 30, 40]).max() <= 3 and "CIELAB" in notes[0]
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    arr, notes = load_rgb(tmp_path / "anim.gif")
    assert arr.shape == (4, 4, 3) and any("first" in n for n in notes)


def test_cli_parallel_jobs_give_the_same_files(tiny_ckpt, tmp_path, sample_image):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.fromarray(sample_image[i * 64:(i + 1) * 64, :96]).save(src / f"{i}.png")
    outs = {}
    for jobs in (1, 3):
        out = tmp_path / f"bits{jobs}"
        r = runner.invoke(app, ["compress", str(src), "-o", str(out), "--model", str(tiny_ckpt), "-j", str(jobs)])
        assert r.exit_code == 0, r.output
        outs[jobs] = {p.name: p.read_bytes() for p in out.iterdir()}
        dec = tmp_path / f"dec{jobs}"
        r = runner.invoke(app, ["decompress", str(out), "-o", str(dec), "-j", str(jobs), "--model", str(tiny_ckpt)])
        assert r.exit_code == 0, r.output
        assert len(list(dec.iterdir())) == 4
    assert outs[1] == outs[3]
