"""The versioned .ilc container (stdlib only; see docs/bitstream.md for every byte).

Layout (all integers little-endian):

  header (68 bytes) | stream lengths (4 bytes each) | stream payloads | CRC32 (4 bytes)

The CRC32 (zlib.crc32) covers every byte before it. unpack() validates everything and
raises BitstreamError with a one-line message naming the problem; it never allocates
more than the input size and never loops on untrusted counts beyond MAX_STREAMS.
"""
from __future__ import annotations

import math
import numbers
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..contract.geometry import PAD_MULTIPLE
from .errors import BitstreamError

MAGIC = b"ILC\x00"
#: The format version this code writes, and the newest it reads.
FORMAT_VERSION = 1
#: Largest original height/width a file may claim.
MAX_DIM = 65535
#: Largest number of streams (tiles x streams per tile) a file may claim.
MAX_STREAMS = 65535
#: Largest z temperature a file may claim.
MAX_TEMPERATURE = 100.0
Z_ZEROS = 0
Z_GAUSSIAN = 1

# magic, version, flags, model id, orig h, orig w, padded h, padded w, z mode, 3 reserved
# bytes, seed, temperature, tile h, tile w, stream count, reserved
_HEAD = struct.Struct("<4sHH16sIIIIB3sQfIIHH")
HEADER_SIZE = _HEAD.size  # 68
CRC_SIZE = 4
assert HEADER_SIZE == 68


@dataclass(frozen=True)
class Header:
    """Everything but the payloads."""

    model_id: bytes  # 16 bytes (bytes.fromhex of the 32-hex-char model id)
    height: int  # original image size
    width: int
    padded_height: int  # size the model ran at (multiple of PAD_MULTIPLE)
    padded_width: int
    z_mode: int = Z_ZEROS  # 0: z = 0; 1: z ~ N(0, z_temperature**2) drawn from z_seed
    z_seed: int = 0
    z_temperature: float = 0.0
    tile_height: int = 0  # 0 = one tile covering the padded image
    tile_width: int = 0
    version: int = FORMAT_VERSION

    def __post_init__(self):
        # the file stores the temperature as float32: hold exactly what a decoder will read
        t = self.z_temperature
        if isinstance(t, numbers.Real) and math.isfinite(t) and abs(t) < 3e38:
            object.__setattr__(self, "z_temperature", struct.unpack("<f", struct.pack("<f", t))[0])

    @property
    def tile_size(self) -> tuple[int, int]:
        return (self.tile_height or self.padded_height, self.tile_width or self.padded_width)

    @property
    def tile_grid(self) -> tuple[int, int]:
        th, tw = self.tile_size
        return (math.ceil(self.padded_height / th), math.ceil(self.padded_width / tw))

    @property
    def num_tiles(self) -> int:
        r, c = self.tile_grid
        return r * c

    def validate(self) -> None:
        """Raise BitstreamError if the fields are inconsistent or out of range."""
        if self.version != FORMAT_VERSION:
            raise BitstreamError(f"cannot handle format version {self.version} (this code: {FORMAT_VERSION})")
        if not isinstance(self.model_id, (bytes, bytearray)) or len(self.model_id) != 16:
            raise BitstreamError(f"model id must be 16 bytes, got {self.model_id!r}")
        h, w, ph, pw = self.height, self.width, self.padded_height, self.padded_width
        if not (1 <= h <= MAX_DIM and 1 <= w <= MAX_DIM):
            raise BitstreamError(f"impossible image size {h}x{w} (allowed 1..{MAX_DIM})")
        for name, p, o in (("height", ph, h), ("width", pw, w)):
            if p % PAD_MULTIPLE or not o <= p < o + PAD_MULTIPLE:
                raise BitstreamError(f"impossible padded {name} {p} for original {name} {o} "
                                     f"(must be the next multiple of {PAD_MULTIPLE})")
        for name, t, p in (("height", self.tile_height, ph), ("width", self.tile_width, pw)):
            if t and (t % PAD_MULTIPLE or t > p):
                raise BitstreamError(f"impossible tile {name} {t} (multiple of {PAD_MULTIPLE}, at most {p})")
        if self.z_mode not in (Z_ZEROS, Z_GAUSSIAN):
            raise BitstreamError(f"unknown z mode {self.z_mode} (known: 0 zeros, 1 seeded Gaussian)")
        t = self.z_temperature
        if not (isinstance(t, numbers.Real) and math.isfinite(t) and 0.0 <= t <= MAX_TEMPERATURE):
            raise BitstreamError(f"impossible z temperature {t} (allowed 0..{MAX_TEMPERATURE})")
        if not (isinstance(self.z_seed, numbers.Integral) and 0 <= self.z_seed < 2**64):
            raise BitstreamError(f"z seed {self.z_seed} does not fit an unsigned 64-bit integer")


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Serialise a header and its streams (tile-major, then stream order) to file bytes."""
    header.validate()
    n = len(streams)
    if not 1 <= n <= MAX_STREAMS or n % header.num_tiles:
        raise BitstreamError(f"{n} streams do not fit {header.num_tiles} tile(s) (at most {MAX_STREAMS})")
    if any(len(s) >= 2**32 for s in streams):
        raise BitstreamError("a stream is larger than 4 GiB")
    head = _HEAD.pack(MAGIC, header.version, 0, bytes(header.model_id), header.height, header.width,
                      header.padded_height, header.padded_width, header.z_mode, b"\0\0\0", header.z_seed,
                      header.z_temperature, header.tile_height, header.tile_width, n, 0)
    body = head + struct.pack(f"<{n}I", *(len(s) for s in streams)) + b"".join(bytes(s) for s in streams)
    return body + struct.pack("<I", zlib.crc32(body))


def _expected_length(data: bytes) -> int | None:
    """Total file length implied by the header and stream table, or None if unreadable."""
    if len(data) < HEADER_SIZE:
        return None
    n = _HEAD.unpack_from(data)[-2]
    table_end = HEADER_SIZE + 4 * n
    if len(data) < table_end:
        return table_end + CRC_SIZE
    return table_end + sum(struct.unpack_from(f"<{n}I", data, HEADER_SIZE)) + CRC_SIZE


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse and validate file bytes -> (header, streams); BitstreamError on any problem."""
    data = bytes(data)
    size = len(data)
    if size == 0:
        raise BitstreamError("empty file (0 bytes): not an ILC bitstream")
    if data[: len(MAGIC)] != MAGIC[:size]:
        raise BitstreamError(f"not an ILC bitstream (bad magic {data[:4]!r}, expected {MAGIC!r})")
    if size < 6:
        raise BitstreamError(f"file truncated: {size} bytes, the header alone needs {HEADER_SIZE}")
    (version,) = struct.unpack_from("<H", data, 4)
    if version > FORMAT_VERSION:
        raise BitstreamError(f"file format version {version} is newer than this decoder (max {FORMAT_VERSION})")
    if version < 1:
        raise BitstreamError(f"unsupported file format version {version}")
    if size < HEADER_SIZE + CRC_SIZE:
        raise BitstreamError(f"file truncated: {size} bytes, the header alone needs {HEADER_SIZE + CRC_SIZE}")
    (crc,) = struct.unpack_from("<I", data, size - CRC_SIZE)
    if zlib.crc32(memoryview(data)[: size - CRC_SIZE]) != crc:
        expected = _expected_length(data)
        if expected is not None and expected > size:
            raise BitstreamError(f"file truncated: {size} bytes, header and stream table say {expected}")
        raise BitstreamError("checksum mismatch: the file is corrupted")
    (_magic, version, flags, mid, h, w, ph, pw, zmode, reserved, seed, temp, th, tw, n, reserved2) = _HEAD.unpack_from(data)
    if flags or reserved != b"\0\0\0" or reserved2:
        raise BitstreamError("reserved header fields are not zero (file from an incompatible writer)")
    if not 1 <= n <= MAX_STREAMS:
        raise BitstreamError(f"impossible stream count {n} (allowed 1..{MAX_STREAMS})")
    table_end = HEADER_SIZE + 4 * n
    if table_end + CRC_SIZE > size:
        raise BitstreamError(f"file truncated: {size} bytes cannot hold a table of {n} streams")
    lengths = struct.unpack_from(f"<{n}I", data, HEADER_SIZE)
    total = table_end + sum(lengths) + CRC_SIZE
    if total != size:
        what = "truncated" if total > size else "has trailing bytes"
        raise BitstreamError(f"file {what}: {size} bytes, header and stream table say {total}")
    header = Header(model_id=mid, height=h, width=w, padded_height=ph, padded_width=pw, z_mode=zmode,
                    z_seed=seed, z_temperature=temp, tile_height=th, tile_width=tw, version=version)
    header.validate()
    if n % header.num_tiles:
        raise BitstreamError(f"{n} streams do not divide evenly over {header.num_tiles} tiles")
    streams, off = [], table_end
    for ln in lengths:
        streams.append(data[off:off + ln])
        off += ln
    return header, streams


def check_model(header: Header, model_id: str) -> None:
    """BitstreamError unless the file was written with this model (model_id: 32 hex chars)."""
    if header.model_id.hex() != model_id:
        raise BitstreamError(f"file was written by model {header.model_id.hex()}, but the loaded model is {model_id}")


def read_file(path: str | Path) -> tuple[Header, list[bytes]]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise BitstreamError(f"{path} is a directory, not an ILC bitstream") from None
    try:
        return unpack(data)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None
