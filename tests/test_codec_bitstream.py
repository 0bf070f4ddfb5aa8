"""The .ilc container: strict validation, clear errors, atomic writes."""
from __future__ import annotations

import os
import struct
import zlib

import pytest

from ilc_export.codec import bitstream as bs
from ilc_export.codec.bitstream import FORMAT_VERSION, HEADER_SIZE, MAGIC, Header, pack, unpack
from ilc_export.contract.files import write_atomic
from ilc_export.codec.errors import BitstreamError

MID = bytes(range(16))


def header(**kw):
    base = dict(model_id=MID, height=100, width=70, padded_height=128, padded_width=128)
    base.update(kw)
    return Header(**base)


STREAMS = [b"\x01\x02\x03\x04" * 3, b"\xaa\xbb\xcc\xdd" * 5]


def reseal(data: bytes) -> bytes:
    """Recompute the CRC after editing header fields (to reach the semantic checks)."""
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def with_field(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return reseal(bytes(b))


def test_roundtrip():
    h = header(z_mode=1, z_seed=2**64 - 1, z_temperature=0.8)
    data = pack(h, STREAMS)
    assert data[:4] == MAGIC and len(data) == HEADER_SIZE + 4 * 2 + sum(map(len, STREAMS)) + 4
    h2, s2 = unpack(data)
    assert h2 == h and s2 == STREAMS
    assert h2.z_temperature == h.z_temperature  # float32 round trip is exact
    assert h2.num_tiles == 1 and h2.tile_size == (128, 128)


def test_tiles_roundtrip():
    h = header(height=200, width=300, padded_height=256, padded_width=320, tile_height=128, tile_width=192)
    assert h.tile_grid == (2, 2)
    data = pack(h, STREAMS * 4)
    assert unpack(data) == (h, STREAMS * 4)
    with pytest.raises(BitstreamError, match="tile"):
        pack(h, STREAMS)  # 2 streams cannot be spread over 4 tiles


def test_empty_file():
    with pytest.raises(BitstreamError, match="empty file"):
        unpack(b"")


def test_wrong_magic():
    data = pack(header(), STREAMS)
    with pytest.raises(BitstreamError, match="bad magic"):
        unpack(b"PNG\x00" + data[4:])
    with pytest.raises(BitstreamError, match="not an ILC bitstream"):
        unpack(b"\x89PNG\r\n\x1a\n" + bytes(100))


def test_future_version():
    data = pack(header(), STREAMS)
    bad = bytearray(data)
    struct.pack_into("<H", bad, 4, FORMAT_VERSION + 1)
    with pytest.raises(BitstreamError, match=f"file format version {FORMAT_VERSION + 1} is newer than this decoder "
                                             f"\\(max {FORMAT_VERSION}\\)"):
        unpack(bytes(bad))
    struct.pack_into("<H", bad, 4, 0)
    with pytest.raises(BitstreamError, match="unsupported file format version 0"):
        unpack(bytes(bad))


def test_truncation_at_every_position():
    data = pack(header(), STREAMS)
    for n in range(len(data)):
        with pytest.raises(BitstreamError) as ei:
            unpack(data[:n])
        msg = str(ei.value)
        assert "\n" not in msg
        assert any(w in msg for w in ("truncated", "empty", "checksum")), msg


def test_truncated_payload_says_truncated():
    data = pack(header(), STREAMS)
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(data[:-10])


def test_every_byte_flip_is_detected():
    data = pack(header(), STREAMS)
    for pos in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(BitstreamError):
                unpack(bytes(bad))


def test_trailing_bytes():
    data = pack(header(), STREAMS)
    with pytest.raises(BitstreamError):
        unpack(data + b"\0")
    resealed = reseal(data[:-4] + b"xx" + bytes(4))  # consistent CRC but two bytes too many
    with pytest.raises(BitstreamError, match="trailing bytes"):
        unpack(resealed)


@pytest.mark.parametrize("offset,fmt,value,msg", [
    (24, "<I", 0, "impossible image size"),
    (24, "<I", 70000, "impossible image size"),
    (28, "<I", 2**32 - 1, "impossible image size"),
    (32, "<I", 192, "impossible padded height"),
    (36, "<I", 100, "impossible padded width"),
    (40, "<B", 7, "unknown z mode"),
    (52, "<f", float("nan"), "temperature"),
    (52, "<f", -1.0, "temperature"),
    (56, "<I", 96, "impossible tile height"),
    (60, "<I", 1024, "impossible tile width"),
    (6, "<H", 1, "reserved"),
    (41, "<B", 1, "reserved"),
    (66, "<H", 3, "reserved"),
])
def test_impossible_fields(offset, fmt, value, msg):
    data = pack(header(), STREAMS)
    with pytest.raises(BitstreamError, match=msg):
        unpack(with_field(data, offset, fmt, value))


def test_impossible_stream_table():
    data = pack(header(), STREAMS)
    with pytest.raises(BitstreamError, match="stream count"):
        unpack(with_field(data, 64, "<H", 0))
    # a huge claimed stream length is checked against the data before anything is allocated
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(with_field(data, HEADER_SIZE, "<I", 2**32 - 1))
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(with_field(data, 64, "<H", 60000))


def test_pack_validates():
    with pytest.raises(BitstreamError, match="model id"):
        pack(header(model_id=b"short"), STREAMS)
    with pytest.raises(BitstreamError, match="impossible image size"):
        pack(header(height=70000, padded_height=70016), STREAMS)
    with pytest.raises(BitstreamError, match="streams"):
        pack(header(), [])
    with pytest.raises(BitstreamError, match="seed"):
        pack(header(z_mode=1, z_seed=2**64), STREAMS)


def test_check_model():
    h = header()
    bs.check_model(h, MID.hex())
    with pytest.raises(BitstreamError, match="written by model 000102"):
        bs.check_model(h, "ff" * 16)


def test_write_atomic(tmp_path):
    p = tmp_path / "out.ilc"
    write_atomic(p, b"old")
    assert p.read_bytes() == b"old"
    write_atomic(p, b"new content")
    assert p.read_bytes() == b"new content"
    assert sorted(os.listdir(tmp_path)) == ["out.ilc"]

    with pytest.raises(TypeError):
        write_atomic(p, object())  # the write fails: the old file stays intact, no temp left
    assert p.read_bytes() == b"new content"
    assert sorted(os.listdir(tmp_path)) == ["out.ilc"]


def test_read_file(tmp_path):
    p = tmp_path / "x.ilc"
    write_atomic(p, pack(header(), STREAMS))
    assert bs.read_file(p)[1] == STREAMS
    write_atomic(p, b"")
    with pytest.raises(BitstreamError, match="x.ilc: empty file"):
        bs.read_file(p)
    with pytest.raises(BitstreamError, match="directory"):
        bs.read_file(tmp_path)
