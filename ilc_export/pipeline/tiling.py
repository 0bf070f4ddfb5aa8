"""Tiles: large images are coded as a grid of independent tiles so memory stays bounded.

Layout (docs/bitstream.md §1, docs/robustness.md): the padded image (a multiple of
PAD_MULTIPLE on each side) is cut into a grid of tiles of ``tile_height x tile_width``
(multiples of PAD_MULTIPLE) in raster order; the last row / column of tiles takes what is
left (still a multiple of PAD_MULTIPLE). Each tile is an independent latent set: the
forward transform runs on the tile alone (its pixels, edge-replicated past the image border
exactly as the untiled padding does) and the tile owns two streams (w_hat, y), so the file
holds 2 x tiles streams, tile after tile. The header stores tile 0 x 0 when one tile covers
the whole padded image (the files an untiled encoder writes, byte for byte).

The encoder picks *balanced* tiles: for a largest side N it uses the fewest tiles of at most
N pixels per side, of equal size rounded up to PAD_MULTIPLE (1152 px with N = 1024 gives
two 576 px tiles, not 1024 + 128).

Seeded z (z mode 1): tile i draws its z from ``PCG64(seed).jumped(i)`` (tile 0 is exactly
``ilc_reference.zsample.surrogate_z``), so every tile gets its own reproducible noise.

numpy only: the decoder must run without torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backends.base import MAX_SHAPE
from ..codec.bitstream import Header
from ..codec.errors import BitstreamError
from ..contract.geometry import PAD_MULTIPLE, latent_shape

#: Largest tile side the encoder uses unless told otherwise (pixels, multiple of PAD_MULTIPLE).
DEFAULT_TILE = 1024
#: Streams each tile owns: hyper-latent (w_hat) and latent (y).
STREAMS_PER_TILE = 2


@dataclass(frozen=True)
class Tile:
    """One tile, in padded-image pixel coordinates."""

    index: int
    top: int
    left: int
    height: int  # multiple of PAD_MULTIPLE
    width: int

    def crop_size(self, image_height: int, image_width: int) -> tuple[int, int]:
        """Rows and columns of the original image this tile covers (>= 1 each)."""
        return (min(self.height, image_height - self.top), min(self.width, image_width - self.left))


def check_tile_option(tile: int | None) -> None:
    """ValueError unless `tile` is None (default), 0 (no tiling) or a positive multiple of PAD_MULTIPLE."""
    if tile is None or tile == 0:
        return
    if not isinstance(tile, (int, np.integer)) or tile < PAD_MULTIPLE or tile % PAD_MULTIPLE:
        raise ValueError(f"tile size must be a positive multiple of {PAD_MULTIPLE} (or 0 for no tiling), got {tile}")


def balanced(padded: int, max_tile: int) -> int:
    """Tile side for one dimension: the fewest tiles of at most max_tile, equal up to rounding."""
    n = math.ceil(padded / max_tile)
    return min(padded, math.ceil(padded / n / PAD_MULTIPLE) * PAD_MULTIPLE)


def choose_tiles(padded_height: int, padded_width: int, tile: int | None = None,
                 max_shape: tuple[int | None, int | None] | None = None) -> tuple[int, int]:
    """Header tile fields (tile_height, tile_width) for a padded size.

    tile: largest tile side (None: DEFAULT_TILE, 0: no tiling). max_shape: the backend's
    largest (height, width) (a TensorRT profile), which always wins. (0, 0) = one tile.
    """
    check_tile_option(tile)
    limit = DEFAULT_TILE if tile is None else tile
    mh = mw = limit or None
    if max_shape is not None:
        bh, bw = max_shape
        if bh:
            mh = min(mh or bh, bh)
        if bw:
            mw = min(mw or bw, bw)
    th = balanced(padded_height, mh) if mh else padded_height
    tw = balanced(padded_width, mw) if mw else padded_width
    if th >= padded_height and tw >= padded_width:
        return (0, 0)
    return (th, tw)


def layout(header: Header) -> list[Tile]:
    """The tiles of a (validated) header, in raster order."""
    th, tw = header.tile_size
    ph, pw = header.padded_height, header.padded_width
    out = []
    for top in range(0, ph, th):
        for left in range(0, pw, tw):
            out.append(Tile(len(out), top, left, min(th, ph - top), min(tw, pw - left)))
    return out


def tile_pixels(img: np.ndarray, tile: Tile) -> np.ndarray:
    """The tile's pixels from an HxWx3 image, edge-replicated past the bottom/right border
    (identical to cropping the padded image, without padding the whole image)."""
    h, w = img.shape[:2]
    rows = np.minimum(np.arange(tile.top, tile.top + tile.height), h - 1)
    cols = np.minimum(np.arange(tile.left, tile.left + tile.width), w - 1)
    ch, cw = tile.crop_size(h, w)
    if ch == tile.height and cw == tile.width:
        return img[tile.top:tile.top + ch, tile.left:tile.left + cw]
    return img[rows[:, None], cols[None, :]]


def tile_z(shape: tuple[int, ...], seed: int | None, temperature: float, index: int) -> np.ndarray:
    """Surrogate z of tile `index` (z = 0 unless seeded with a non-zero temperature)."""
    if seed is None or temperature == 0.0:
        return np.zeros(shape, dtype=np.float32)
    rng = np.random.Generator(np.random.PCG64(seed).jumped(index))
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(temperature)).astype(np.float32)


def tile_shapes(cfg, tiles: list[Tile]) -> list[dict[str, tuple[int, int, int]]]:
    """latent_shape per tile; a model without a z (the conv baseline) gets a z of 0 channels,
    the shape its inverse graph declares (``onnx_export.graph_io``)."""
    out = []
    for t in tiles:
        sh = latent_shape(cfg, t.height, t.width)
        if cfg.kind != "ilc":
            sh = {**sh, "z": (0, *sh["z"][1:])}
        out.append(sh)
    return out


def check_streams(entropy, tiles: list[Tile], shapes: list[dict], streams: list[bytes]) -> None:
    """Refuse a file whose streams cannot hold the symbols its tiles claim, before anything
    image- or latent-sized is allocated (a tiny file claiming a 65535 x 65535 image)."""
    n = len(tiles)
    if len(streams) != STREAMS_PER_TILE * n:
        raise BitstreamError(f"expected {STREAMS_PER_TILE} entropy-coded streams per tile "
                             f"({STREAMS_PER_TILE * n} for {n} tile(s)), found {len(streams)}")
    for t, sh in zip(tiles, shapes):
        for name, data, dims, b in (("hyper", streams[2 * t.index], sh["w"], entropy.min_bits_w),
                                    ("latent", streams[2 * t.index + 1], sh["y"], entropy.min_bits_y)):
            count = math.prod(dims)
            if 8 * len(data) + 256 < 0.99 * count * b:  # the same slack as EntropyCodec.decode
                where = f" of tile {t.index}" if n > 1 else ""
                raise BitstreamError(f"{name} stream{where} of {len(data)} bytes is too short for {count} symbols "
                                     "(truncated file or wrong image size)")


def backend_max_shape(runner) -> tuple[int | None, int | None] | None:
    """Largest (height, width) the runner accepts, floored to PAD_MULTIPLE (a runner that
    declares MAX_SHAPE, e.g. TensorRT engines: the optimisation profile's max), or None when
    it has no limit."""
    if MAX_SHAPE not in runner.capabilities:
        return None
    try:
        h, w = runner.max_image_size()
    except (KeyError, TypeError, ValueError):  # no usable profile: no limit
        return None
    h, w = h // PAD_MULTIPLE * PAD_MULTIPLE, w // PAD_MULTIPLE * PAD_MULTIPLE
    if h < PAD_MULTIPLE or w < PAD_MULTIPLE:
        return None
    return (h, w)
