"""Large images are coded tile by tile: layout in the header, independent tiles, reassembly."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from ilc_export.cli.run_cli import app
from ilc_export.backends import MAX_SHAPE
from ilc_export.codec.bitstream import Header, unpack
from ilc_export.pipeline import tiling
from ilc_reference.zsample import surrogate_z


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (25, 40, 3)).astype(np.uint8)
    return np.kron(base, np.ones((8, 8, 1), np.uint8))[:197, :301]  # blocky, not a multiple of 64


def test_choose_tiles():
    assert tiling.choose_tiles(1024, 1024) == (0, 0)  # fits the default tile: untiled, as before
    assert tiling.choose_tiles(1152, 640) == (576, 640)  # balanced: 2 x 576, not 1024 + 128
    assert tiling.choose_tiles(4096, 4096) == (1024, 1024)
    assert tiling.choose_tiles(4096, 4096, 0) == (0, 0)
    assert tiling.choose_tiles(4032, 64) == (1024, 64)  # 1 x 4000: 4 tiles of 1024 rows (last 960)
    assert tiling.choose_tiles(320, 320, 128) == (128, 128)  # 3 x 3 grid, last row/col 64
    assert tiling.choose_tiles(256, 256, 0, max_shape=(128, 512)) == (128, 256)  # a TensorRT profile wins
    for bad in (-64, 1, 100, 32):
        with pytest.raises(ValueError, match="multiple of 64"):
            tiling.check_tile_option(bad)


def test_layout_covers_the_padded_image():
    h = Header(model_id=bytes(16), height=300, width=1000, padded_height=320, padded_width=1024,
               tile_height=128, tile_width=448)
    tiles = tiling.layout(h)
    assert [(t.top, t.left, t.height, t.width) for t in tiles[:4]] == [(0, 0, 128, 448), (0, 448, 128, 448),
                                                                     (0, 896, 128, 128), (128, 0, 128, 448)]
    cover = np.zeros((320, 1024), int)
    for t in tiles:
        cover[t.top:t.top + t.height, t.left:t.left + t.width] += 1
    assert len(tiles) == h.num_tiles == 9 and (cover == 1).all()


def test_tiled_file_layout_and_round_trip(codec, image):
    data, st = codec.compress(image, tile=128)
    header, streams = unpack(data)
    assert (header.tile_height, header.tile_width) == (128, 128) and header.tile_grid == (2, 3)
    assert len(streams) == 2 * 6
    rec, st2 = codec.decompress(data)
    assert rec.shape == image.shape and rec.dtype == np.uint8
    assert st.num_symbols == st2.num_symbols
    untiled, _ = codec.compress(image, tile=0)
    assert unpack(untiled)[0].tile_size == (256, 320) and len(unpack(untiled)[1]) == 2


def test_tiles_are_independent_and_reassembled_in_place(codec, image):
    """Tile i of a tiled file holds exactly the streams of its pixels coded alone, and its
    region of the decoded image is that single-tile file's decoded image."""
    data, _ = codec.compress(image, tile=128)
    header, streams = unpack(data)
    rec, _ = codec.decompress(data)
    h, w = image.shape[:2]
    for t in tiling.layout(header):
        alone, _ = codec.compress(np.ascontiguousarray(tiling.tile_pixels(image, t)), tile=0)
        assert unpack(alone)[1] == streams[2 * t.index:2 * t.index + 2], t
        ch, cw = t.crop_size(h, w)
        assert np.array_equal(codec.decompress(alone)[0][:ch, :cw], rec[t.top:t.top + ch, t.left:t.left + cw]), t


def test_tile_pixels_match_the_padded_image(image):
    from ilc_export.pipeline.image_io import pad_to_multiple

    padded = pad_to_multiple(image, 64)
    h = Header(model_id=bytes(16), height=197, width=301, padded_height=256, padded_width=320,
               tile_height=192, tile_width=128)
    for t in tiling.layout(h):
        assert np.array_equal(tiling.tile_pixels(image, t), padded[t.top:t.top + t.height, t.left:t.left + t.width])


def test_single_tile_files_are_unchanged(codec, image):
    """Images within one tile keep tile fields 0 (the bytes an untiled encoder writes)."""
    small = image[:120, :130]
    d_default, _ = codec.compress(small)
    assert unpack(d_default)[0].tile_size == (128, 192) and unpack(d_default)[0].tile_height == 0
    assert d_default == codec.compress(small, tile=0)[0] == codec.compress(small, tile=256)[0]


def test_seeded_z_per_tile(codec, image):
    assert np.array_equal(tiling.tile_z((3, 4, 5), 9, 0.7, 0), surrogate_z((3, 4, 5), 9, 0.7))
    assert not np.array_equal(tiling.tile_z((3, 4, 5), 9, 0.7, 1), tiling.tile_z((3, 4, 5), 9, 0.7, 0))
    data, _ = codec.compress(image, tile=128, z_seed=11, z_temperature=0.6)
    a, _ = codec.decompress(data)
    assert np.array_equal(a, codec.decompress(data)[0])
    assert not np.array_equal(a, codec.decompress(codec.compress(image, tile=128)[0])[0])


def test_backend_max_shape_caps_tiles(codec, image):
    class Limited:
        capabilities = frozenset({MAX_SHAPE})

        def max_image_size(self):
            return (200, 130)

    class Unlimited:
        capabilities = frozenset()

    assert tiling.backend_max_shape(Limited()) == (192, 128)
    assert tiling.backend_max_shape(Unlimited()) is None
    old = codec.max_shape
    codec.max_shape = (192, 128)
    try:
        header = unpack(codec.compress(image, tile=0)[0])[0]
    finally:
        codec.max_shape = old
    assert header.tile_size == (128, 128)  # 256 rows -> 2 x 128 (balanced), 320 cols -> 3 x 128


def test_cli_tile_option(tiny_ckpt, tmp_path, image):
    from PIL import Image

    src = tmp_path / "big.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "big.ilc"
    r = CliRunner().invoke(app, ["compress", str(src), "-o", str(out), "--model", str(tiny_ckpt), "--tile", "192"])
    assert r.exit_code == 0, r.output
    assert unpack(out.read_bytes())[0].tile_size == (128, 192)  # balanced: 256 -> 2 x 128, 320 -> 2 x 192
    r = CliRunner().invoke(app, ["decompress", str(out), "-o", str(tmp_path / "d.png"), "--model", str(tiny_ckpt)])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "d.png").size == (301, 197)
    r = CliRunner().invoke(app, ["compress", str(src), "-o", str(out), "--model", str(tiny_ckpt), "--tile", "100"])
    assert r.exit_code == 1 and "multiple of 64" in r.output
