"""Image <-> bitstream: padding, tiles, the backend's graphs, the entropy codec, the container.

The pipeline is the only layer that knows both a backend (arrays in, arrays out) and the
codec core (symbols in, bytes out). Images larger than a tile (default 1024 px a side, see
``tiling``) are coded tile by tile, so the transform's memory does not grow with the image.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import DEVICE_PIXELS, FUSED_TILES, REFINE, Runner
from ..codec.bitstream import Header, check_model, pack, unpack
from ..codec.entropy import EntropyCodec
from ..codec.errors import BitstreamError
from ..codec.tables import CodecTables
from ..contract.geometry import padded_size
from . import tiling
from .image_io import from_nchw, model_input
from .models import UsageError

_DEFAULT = object()


def default_max_pixels() -> int | None:
    """Largest image (pixels) decompress accepts by default: Pillow's MAX_IMAGE_PIXELS, the
    limit compress honours when reading files (None when Pillow's limit is lifted)."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


@dataclass
class Stats:
    """Timings (seconds) and sizes of one compress or decompress call."""

    times: dict[str, float] = field(default_factory=dict)
    num_bytes: int = 0
    num_symbols: int = 0
    height: int = 0
    width: int = 0

    @property
    def bpp(self) -> float:
        return 8.0 * self.num_bytes / (self.height * self.width)

    @property
    def total_time(self) -> float:
        return sum(self.times.values())


class _Timer:
    def __init__(self, stats: Stats, key: str):
        self.stats, self.key = stats, key

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.stats.times[self.key] = self.stats.times.get(self.key, 0.0) + time.perf_counter() - self.t


@dataclass
class Decoding:
    """A checked file on its way to pixels: header, streams (two per tile), tiles, latent shapes."""

    header: Header
    streams: list[bytes]
    tiles: list[tiling.Tile]
    shapes: list[dict]

    def tile_streams(self, index: int) -> list[bytes]:
        """The two streams (w_hat, y) of tile `index`."""
        return self.streams[tiling.STREAMS_PER_TILE * index:tiling.STREAMS_PER_TILE * (index + 1)]


class ImageCodec:
    """Compress/decompress 8-bit RGB images with one model on one backend."""

    def __init__(self, runner: Runner, tables: CodecTables | None = None, fused: bool | None = None):
        """fused: code each tile through the runner's encode_tile / decode_tile (latents stay
        on its device) when it declares FUSED_TILES (None: whenever it does); False: the
        per-graph host path. Both give identical files and pixels on the same device.

        A runner that refines (REFINE, loaded with refine=N) is refused on the host path
        (UsageError) rather than refined there: refinement is gradient steps inside
        encode_tile, not a graph, so the host path (the named graphs every backend exports)
        would need a second refinement entry point and would stop being the plain per-graph
        cross-check of the fused path; silently encoding unrefined is the trap to avoid."""
        self.runner = runner
        self.fused = FUSED_TILES in runner.capabilities if fused is None else bool(fused)
        if self.fused and FUSED_TILES not in runner.capabilities:
            raise ValueError(f"the {runner.name} runner does not declare {FUSED_TILES}")
        if not self.fused and REFINE in runner.capabilities and runner.refines:
            raise UsageError(f"the {runner.name} runner was loaded with refine, which only its encode_tile does: "
                             "code it fused (fused=None or True) or load it without refine")
        #: the fused runner converts pixels itself (on its device)
        self.device_pixels = self.fused and DEVICE_PIXELS in runner.capabilities
        self.tables = tables or CodecTables.load(runner.tables_path())
        self.entropy = EntropyCodec(self.tables)
        self.model_id = runner.model_id
        self.cfg = runner.config
        #: largest tile side compress uses by default (0: never tile)
        self.tile = tiling.DEFAULT_TILE
        #: the backend's largest (height, width), e.g. a TensorRT profile's max; caps the tiles
        self.max_shape = tiling.backend_max_shape(runner)

    # -- the encode protocol: plan, per tile symbols, entropy coding, container -------------
    # compress() is these steps in a loop; verification, scripts and benchmarks call the same
    # steps (never the graphs by hand), so one change here reaches every path.
    def plan(self, img: np.ndarray, tile: int | None = None, z_seed: int | None = None,
             z_temperature: float = 0.0) -> Header:
        """The validated header of an HxWx3 uint8 image: sizes, padding, tiles, z mode. tile:
        largest tile side in pixels (multiple of PAD_MULTIPLE; None: self.tile, default 1024;
        0: one tile whatever the size). A backend with a maximum shape caps the tiles."""
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"expected an HxWx3 uint8 image, got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        ph, pw = padded_size(h, w)
        th, tw = tiling.choose_tiles(ph, pw, self.tile if tile is None else tile, self.max_shape)
        header = Header(
            model_id=bytes.fromhex(self.model_id), height=h, width=w, padded_height=ph, padded_width=pw,
            z_mode=0 if z_seed is None or z_temperature == 0 else 1,
            z_seed=z_seed or 0, z_temperature=float(z_temperature), tile_height=th, tile_width=tw,
        )
        header.validate()
        return header

    def latents(self, px: np.ndarray, perturb=None) -> dict[str, np.ndarray]:
        """Forward + hyper_mean of one tile's (padded) pixels on the host: everything the
        encoder computes in floating point. perturb(name, array) -> array, if given, replaces
        w before it is quantised, then y and mu (robustness checks simulate another encoder)."""
        out = self.runner.run("forward", {"image": model_input(px)})
        w = out["w"][0] if perturb is None else perturb("w", out["w"][0])
        w_hat = self.entropy.quantize_w(w)
        mu = self.runner.run("hyper_mean", {"w_hat": w_hat[None].astype(np.float32)})["mu"][0]
        y = out["y"][0]
        if perturb is not None:
            y, mu = perturb("y", y), perturb("mu", mu)
        return {"y": y, "z": out["z"][0], "w_hat": w_hat, "mu": mu}

    def symbols(self, lat: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(w_hat, y symbols) of a tile's latents: what the entropy coder writes."""
        return lat["w_hat"], self.entropy.quantize_y(lat["y"], lat["mu"])

    def tile_symbols(self, px: np.ndarray, valid: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(w_hat, y symbols) of one tile's padded pixels: on the runner's device when fused,
        else ``symbols(latents(px))``; both give the same symbols on the same device. valid:
        the (rows, columns) of ``px`` inside the image (a refining runner measures distortion
        there only; None: all of ``px``)."""
        if self.fused:
            return self.runner.encode_tile(px if self.device_pixels else model_input(px), self.entropy.quantize_w,
                                           valid=valid)
        return self.symbols(self.latents(px))

    def encode_symbols(self, w_hat: np.ndarray, y_sym: np.ndarray) -> list[bytes]:
        """One tile's two entropy-coded streams (w_hat, y)."""
        return self.entropy.encode(w_hat, y_sym)

    def encode_tiles(self, img: np.ndarray, header: Header, st: Stats | None = None):
        """Yield each tile's (w_hat, y symbols) in file order, one tile in memory at a time."""
        st = st if st is not None else Stats()
        for t in tiling.layout(header):
            with _Timer(st, "transform"):
                syms = self.tile_symbols(tiling.tile_pixels(img, t), t.crop_size(header.height, header.width))
            yield syms
            del syms

    def write(self, header: Header, symbols, st: Stats | None = None) -> bytes:
        """The file: each tile's (w_hat, y symbols) entropy-coded, in the container."""
        st = st if st is not None else Stats()
        streams: list[bytes] = []
        for w_hat, y_sym in symbols:
            with _Timer(st, "entropy"):
                streams += self.encode_symbols(w_hat, y_sym)
            st.num_symbols += y_sym.size + w_hat.size
            del w_hat, y_sym
        with _Timer(st, "container"):
            data = pack(header, streams)
        st.num_bytes = len(data)
        return data

    def compress(self, img: np.ndarray, z_seed: int | None = None, z_temperature: float = 0.0,
                 tile: int | None = None) -> tuple[bytes, Stats]:
        """HxWx3 uint8 -> file bytes (options: ``plan``)."""
        header = self.plan(img, tile, z_seed, z_temperature)
        st = Stats(height=header.height, width=header.width)
        return self.write(header, self.encode_tiles(img, header, st), st), st

    # -- the decode protocol: open the file, per tile symbols, pixels ----------------------------
    def read_header(self, data: bytes) -> tuple[Header, list[bytes]]:
        header, streams = unpack(data)
        check_model(header, self.model_id)
        return header, streams

    def open_file(self, data: bytes, max_pixels: int | None = _DEFAULT) -> Decoding:
        """Parse and check a file before anything image-sized is allocated; BitstreamError on
        anything wrong. max_pixels: refuse files claiming a larger image (default: Pillow's
        MAX_IMAGE_PIXELS; None or 0: no limit). Every size the file claims is checked against
        its stream lengths."""
        header, streams = self.read_header(data)
        h, w = header.height, header.width
        if padded_size(h, w) != (header.padded_height, header.padded_width):
            raise BitstreamError("header padding does not match the image size")
        limit = default_max_pixels() if max_pixels is _DEFAULT else max_pixels
        if limit and h * w > limit:
            raise BitstreamError(f"file claims a {w}x{h} image ({h * w} pixels), above the decoder's limit of "
                                 f"{limit} pixels (Pillow's MAX_IMAGE_PIXELS; --max-pixels / max_pixels= raises it)")
        tiles = tiling.layout(header)
        shapes = tiling.tile_shapes(self.cfg, tiles)
        tiling.check_streams(self.entropy, tiles, shapes, streams)
        return Decoding(header, streams, tiles, shapes)

    def tile_shape(self, height: int, width: int) -> dict[str, tuple[int, int, int]]:
        """Latent shapes (w, y, z) of one tile of padded pixels."""
        return tiling.tile_shapes(self.cfg, [tiling.Tile(0, 0, 0, height, width)])[0]

    def decode_symbols(self, streams: list[bytes], shape: dict) -> tuple[np.ndarray, np.ndarray]:
        """(w_hat, y symbols) of one tile's two streams: integers only, the same on every machine."""
        return self.entropy.decode(streams, shape["w"], shape["y"])

    def file_symbols(self, data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every tile's (w_hat, y symbols) of a file, entropy decoding only."""
        dec = self.open_file(data, max_pixels=None)
        return [self.decode_symbols(dec.tile_streams(t.index), dec.shapes[t.index]) for t in dec.tiles]

    def tile_image(self, dec: Decoding, index: int, w_hat: np.ndarray, y_sym: np.ndarray) -> np.ndarray:
        """A tile's decoded uint8 pixels (HxWx3), cropped to the part inside the image."""
        header, t, sh = dec.header, dec.tiles[index], dec.shapes[index]
        seed = header.z_seed if header.z_mode == 1 else None
        if self.fused:  # z = 0 is made on the runner's device, not copied there
            z = (1, *sh["z"]) if seed is None or header.z_temperature == 0.0 else \
                tiling.tile_z((1, *sh["z"]), seed, header.z_temperature, t.index)
            x = self.runner.decode_tile(w_hat, y_sym, z)
        else:
            mu = self.runner.run("hyper_mean", {"w_hat": w_hat[None].astype(np.float32)})["mu"]
            y_hat = (y_sym[None].astype(np.float32) + mu).astype(np.float32)
            z = tiling.tile_z((1, *sh["z"]), seed, header.z_temperature, t.index)
            x = self.runner.run("inverse", {"y_hat": y_hat, "z": z})["image"]
            del mu, y_hat
        del z
        ch, cw = t.crop_size(header.height, header.width)
        if self.device_pixels:  # already uint8, non-finite values handled on the device
            return x[:ch, :cw]
        if not np.isfinite(x).all():  # only a forged (CRC-valid) file can push the transform there
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
        return from_nchw(x, ch, cw)

    def decompress(self, data: bytes, max_pixels: int | None = _DEFAULT) -> tuple[np.ndarray, Stats]:
        """File bytes -> HxWx3 uint8; BitstreamError on anything wrong with the file
        (max_pixels: ``open_file``). Tiles are decoded one at a time."""
        dec = self.open_file(data, max_pixels)
        h, w = dec.header.height, dec.header.width
        st = Stats(height=h, width=w, num_bytes=len(data))
        out = None
        for t in dec.tiles:
            with _Timer(st, "entropy"):
                w_hat, y_sym = self.decode_symbols(dec.tile_streams(t.index), dec.shapes[t.index])
            with _Timer(st, "transform"):
                px = self.tile_image(dec, t.index, w_hat, y_sym)
            st.num_symbols += y_sym.size + w_hat.size
            if out is None:  # allocated once the first tile has decoded
                out = np.empty((h, w, 3), np.uint8)
            out[t.top:t.top + px.shape[0], t.left:t.left + px.shape[1]] = px
            del px
        return out, st
