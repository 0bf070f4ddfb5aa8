"""Hostile and odd images on the compress side (extends tests/test_pipeline.py::test_image_policies).

Policies (ilc_export/pipeline/image_io.py, docs/robustness.md): EXIF orientation honoured;
alpha dropped with a note; 16-bit scaled to 8; every mode converted to RGB; Pillow's
decompression-bomb limit honoured (a clear error, before the pixels are read).
"""
from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ilc_export.cli.run_cli import app
from ilc_export.pipeline.image_io import ImageError, load_rgb


def write_png(path, width, height, bit_depth, color_type, rows: bytes) -> None:
    """A PNG written by hand (any header, any IDAT)."""
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_decompression_bomb_header_is_refused_without_reading(tmp_path):
    p = tmp_path / "bomb.png"
    write_png(p, 100000, 100000, 8, 2, b"\0" * 64)  # claims 10^10 pixels, holds 64 bytes
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="refused, image larger than Pillow's safety limit"):
            load_rgb(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize("side", [40, 50])  # between the limit and twice it (Pillow warns), and above (Pillow raises)
def test_decompression_bomb_limit_is_honoured(tmp_path, monkeypatch, side):
    p = tmp_path / "big.png"
    Image.new("RGB", (side, side)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="safety limit"):
        load_rgb(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a user who lifts Pillow's limit lifts ours
    assert load_rgb(p)[0].shape == (side, side, 3)


def test_truncated_jpeg_and_wrong_suffix(tmp_path):
    j = tmp_path / "t.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(j)
    j.write_bytes(j.read_bytes()[:200])
    with pytest.raises(ImageError, match="cannot decode image"):
        load_rgb(j)
    png_named_jpg = tmp_path / "really_png.jpg"
    Image.new("RGB", (3, 2), (9, 8, 7)).save(png_named_jpg, format="PNG")
    assert load_rgb(png_named_jpg)[0][0, 0].tolist() == [9, 8, 7]  # content decides, not the suffix
    (tmp_path / "dir.png").mkdir()
    with pytest.raises((ImageError, OSError)):
        load_rgb(tmp_path / "dir.png")


def test_16bit_rgb_png(tmp_path):
    a = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 3000).astype(">u2")
    p = tmp_path / "rgb16.png"
    write_png(p, 3, 2, 16, 2, b"".join(b"\0" + a[r].tobytes() for r in range(2)))
    arr, _ = load_rgb(p)
    assert arr.dtype == np.uint8 and np.abs(arr.astype(int) - np.round(a / 257.0)).max() <= 1
    p4 = tmp_path / "rgba16.png"
    a4 = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 2000).astype(">u2")
    write_png(p4, 3, 2, 16, 6, b"".join(b"\0" + a4[r].tobytes() for r in range(2)))
    arr, notes = load_rgb(p4)
    assert arr.shape == (2, 3, 3) and np.abs(arr.astype(int) - np.round(a4[..., :3] / 257.0)).max() <= 1
    assert any("alpha" in n for n in notes)


def test_other_modes(tmp_path):
    cases = {
        "la.png": Image.new("LA", (4, 3), (10, 20)),
        "one.png": Image.new("1", (5, 5), 1),
        "i16.tif": Image.fromarray(np.full((3, 4), 40000, np.uint16)),
        "f.tif": Image.fromarray(np.full((3, 4), 300.5, np.float32)),
        "ycc.jpg": Image.new("YCbCr", (4, 4), (100, 128, 128)),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        arr, _ = load_rgb(tmp_path / name)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, name
    assert any("alpha" in n for n in load_rgb(tmp_path / "la.png")[1])
    assert load_rgb(tmp_path / "one.png")[0].min() == 255
    assert load_rgb(tmp_path / "i16.tif")[0][0, 0, 0] == round(40000 / 65535 * 255)
    pt = tmp_path / "pt.png"
    pal = Image.new("P", (4, 4))
    pal.info["transparency"] = 0
    pal.save(pt)
    assert any("alpha" in n for n in load_rgb(pt)[1])


def test_animated_gif_codes_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 4), (i * 100, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    arr, _ = load_rgb(tmp_path / "a.gif")
    assert arr.shape == (4, 6, 3) and arr[0, 0, 0] == 0


@pytest.mark.parametrize("orientation,expect", [(3, "rot180"), (6, "rot270"), (8, "rot90"), (2, "fliplr")])
def test_exif_orientation_pixels(tmp_path, orientation, expect):
    a = np.zeros((4, 6, 3), np.uint8)
    a[0, 0] = (255, 0, 0)  # a marked corner
    a[0, 5] = (0, 255, 0)
    p = tmp_path / f"o{orientation}.png"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(p, exif=exif)
    want = {"rot180": np.rot90(a, 2), "rot270": np.rot90(a, 3), "rot90": np.rot90(a, 1), "fliplr": a[:, ::-1]}[expect]
    assert np.array_equal(load_rgb(p)[0], want)


def test_cli_odd_images_end_to_end(tiny_ckpt, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGBA", (7, 5), (1, 2, 3, 0)).save(src / "alpha.png")
    Image.new("RGB", (1, 1), (200, 100, 50)).save(src / "one.png")
    Image.new("CMYK", (9, 3), (0, 50, 100, 0)).save(src / "cmyk.jpg")
    Image.new("P", (3, 8)).save(src / "pal.gif")
    (src / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["compress", str(src), "-o", str(out), "--model", str(tiny_ckpt)])
    text = " ".join(r.output.split())  # rich wraps long lines
    assert r.exit_code == 1 and "empty file" in text and "1 of 5 files failed" in text and "Traceback" not in text
    assert "alpha channel dropped" in text
    assert sorted(p.name for p in out.iterdir()) == ["alpha.ilc", "cmyk.ilc", "one.ilc", "pal.ilc"]
    dec = tmp_path / "dec"
    r = CliRunner().invoke(app, ["decompress", str(out), "-o", str(dec), "--model", str(tiny_ckpt)])
    assert r.exit_code == 0, r.output
    sizes = {p.name: Image.open(p).size for p in dec.iterdir()}
    assert sizes == {"alpha.png": (7, 5), "one.png": (1, 1), "cmyk.png": (9, 3), "pal.png": (3, 8)}
    assert all(Image.open(p).mode == "RGB" for p in dec.iterdir())
