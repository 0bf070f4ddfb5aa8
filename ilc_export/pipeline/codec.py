"""Image <-> bitstream: padding, the backend's graphs, the entropy codec, the container.

The pipeline is the only layer that knows both a backend (arrays in, arrays out) and the
codec core (symbols in, bytes out).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ilc_reference.config import PAD_MULTIPLE, latent_shape, padded_size
from ilc_reference.zsample import surrogate_z

from ..backends.base import Runner
from ..codec.bitstream import Header, check_model, pack, unpack
from ..codec.entropy import EntropyCodec
from ..codec.errors import BitstreamError
from ..codec.tables import CodecTables
from .image_io import from_nchw, pad_to_multiple, to_nchw


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


class ImageCodec:
    """Compress/decompress 8-bit RGB images with one model on one backend."""

    def __init__(self, runner: Runner, tables: CodecTables | None = None):
        self.runner = runner
        self.tables = tables or CodecTables.load(runner.tables_path())
        self.entropy = EntropyCodec(self.tables)
        self.model_id = runner.model_id
        self.cfg = runner.config

    # -- encode ---------------------------------------------------------------
    def latents(self, img: np.ndarray) -> dict[str, np.ndarray]:
        """Forward + hyper_mean: everything the encoder computes in floating point."""
        x = to_nchw(pad_to_multiple(img, PAD_MULTIPLE))
        out = self.runner.run("forward", {"image": x})
        w_hat = self.entropy.quantize_w(out["w"][0])
        mu = self.runner.run("hyper_mean", {"w_hat": w_hat[None].astype(np.float32)})["mu"][0]
        return {"y": out["y"][0], "z": out["z"][0], "w_hat": w_hat, "mu": mu}

    def compress(self, img: np.ndarray, z_seed: int | None = None, z_temperature: float = 0.0) -> tuple[bytes, Stats]:
        h, w = img.shape[:2]
        st = Stats(height=h, width=w)
        with _Timer(st, "transform"):
            lat = self.latents(img)
        y_sym = self.entropy.quantize_y(lat["y"], lat["mu"])
        with _Timer(st, "entropy"):
            streams = self.entropy.encode(lat["w_hat"], y_sym)
        ph, pw = padded_size(h, w)
        header = Header(
            model_id=bytes.fromhex(self.model_id), height=h, width=w, padded_height=ph, padded_width=pw,
            z_mode=0 if z_seed is None or z_temperature == 0 else 1,
            z_seed=z_seed or 0, z_temperature=float(z_temperature),
        )
        with _Timer(st, "container"):
            data = pack(header, streams)
        st.num_bytes = len(data)
        st.num_symbols = y_sym.size + lat["w_hat"].size
        return data, st

    # -- decode ---------------------------------------------------------------
    def read_header(self, data: bytes) -> tuple[Header, list[bytes]]:
        header, streams = unpack(data)
        check_model(header, self.model_id)
        return header, streams

    def decompress(self, data: bytes) -> tuple[np.ndarray, Stats]:
        header, streams = self.read_header(data)
        st = Stats(height=header.height, width=header.width, num_bytes=len(data))
        if padded_size(header.height, header.width) != (header.padded_height, header.padded_width):
            raise BitstreamError("header padding does not match the image size")
        shapes = latent_shape(self.cfg, header.padded_height, header.padded_width)
        with _Timer(st, "entropy"):
            w_hat, y_sym = self.entropy.decode(streams, shapes["w"], shapes["y"])
        with _Timer(st, "transform"):
            mu = self.runner.run("hyper_mean", {"w_hat": w_hat[None].astype(np.float32)})["mu"]
            y_hat = (y_sym[None].astype(np.float32) + mu).astype(np.float32)
            seed = header.z_seed if header.z_mode == 1 else None
            z = surrogate_z((1, *shapes["z"]), seed, header.z_temperature)
            x = self.runner.run("inverse", {"y_hat": y_hat, "z": z})["image"]
        st.num_symbols = y_sym.size + w_hat.size
        return from_nchw(x, header.height, header.width), st
