"""Hostile bitstreams: only BitstreamError, bounded time and memory, no silently wrong image.

A seeded sample of benchmarks/fuzz_decoder.py (the 10,000-case run is a benchmark), every
truncation of every corpus file, hypothesis garbage, and the largest size the format allows.
"""
from __future__ import annotations

import struct
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilc_export.codec.bitstream import MAX_DIM, unpack
from ilc_export.codec.errors import BitstreamError

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import fuzz_decoder  # noqa: E402


@pytest.fixture(scope="module")
def fuzzer(tiny_ckpt, tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest
    yield fuzz_decoder.Fuzzer(tiny_ckpt, seed=20240607, n_cases=300, exhaustive=False, case_timeout=5.0,
                               mem_limit_mib=64, cli_every=25, workdir=tmp_path_factory.mktemp("fuzz"))
    torch.set_num_threads(threads)


def reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_seeded_fuzz_sample(fuzzer):
    records = fuzz_decoder.run_in_process(fuzzer, range(300))
    s = fuzz_decoder.summarize(records, 0.0)
    assert s["failures"] == {k: 0 for k in fuzz_decoder.FAILURES}, s["failed_cases"]
    assert s["cli_checked"] == 12
    # the sample reaches every mutation kind and the deep checks, not only the CRC
    assert set(s["kinds"]) == set(fuzz_decoder.KINDS)
    errors = " ".join(r.get("error", "") for r in records)
    for what in ("checksum mismatch", "truncated", "stream is corrupted", "written by model", "impossible"):
        assert what in errors, what


def test_every_truncation_is_refused(fuzzer):
    codec = fuzzer.codec
    for item in fuzzer.corpus:
        data = item["data"]
        for p in range(len(data)):
            with pytest.raises(BitstreamError):
                codec.decompress(data[:p])
        assert np.array_equal(codec.decompress(data)[0], item["image"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=600), keep=st.integers(0, 200))
def test_garbage_after_a_valid_prefix(fuzzer, junk, keep):
    data = fuzzer.corpus[1]["data"]
    for blob in (junk, data[:keep] + junk, reseal(data[:keep] + junk)):
        try:
            img, _ = fuzzer.codec.decompress(blob)
        except BitstreamError:
            continue
        assert False, f"decoded {len(blob)} hostile bytes to an image of {img.shape}"


def _claim(data: bytes, h: int, w: int, tile: int = 0) -> bytes:
    b = bytearray(data[:-4])
    struct.pack_into("<IIII", b, 24, h, w, -(-h // 64) * 64 % 2**32, -(-w // 64) * 64 % 2**32)
    struct.pack_into("<II", b, 56, tile, tile)
    return reseal(bytes(b))


@pytest.mark.parametrize("tile", [0, 1024, 4096])
def test_largest_claimed_size_is_refused_before_allocating(fuzzer, tile):
    data = fuzzer.corpus[0]["data"]  # one tile, two streams
    forged = _claim(data, MAX_DIM, MAX_DIM, tile)
    for kw, msg in (({}, "limit|stream|tiles"), ({"max_pixels": None}, "too short|stream")):
        tracemalloc.start()
        try:
            with pytest.raises(BitstreamError, match=msg):
                fuzzer.codec.decompress(forged, **kw)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # a 65535 x 65535 RGB image is 12.9 GB; the refusal costs next to nothing
        assert peak < 1 << 20, peak


def test_sizes_beyond_the_format_are_refused(fuzzer):
    data = fuzzer.corpus[0]["data"]
    for h, w in ((100000, 100000), (2**32 - 1, 64), (0, 64)):
        with pytest.raises(BitstreamError, match="impossible image size"):
            unpack(_claim(data, h, w))


def test_pixel_limit_follows_pillow(fuzzer, monkeypatch):
    from PIL import Image

    data = fuzzer.corpus[1]["data"]  # 96 x 200
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 96 * 200 - 1)
    with pytest.raises(BitstreamError, match="limit of 19199 pixels"):
        fuzzer.codec.decompress(data)
    assert fuzzer.codec.decompress(data, max_pixels=None)[0].shape == (96, 200, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert fuzzer.codec.decompress(data)[0].shape == (96, 200, 3)


def test_forged_tile_stream_count(fuzzer):
    """A CRC-valid file whose stream count fits the tile grid's divisibility but not 2 per tile."""
    codec = fuzzer.codec
    data, _ = codec.compress(np.zeros((64, 64, 3), np.uint8))
    h, streams = unpack(data)
    from ilc_export.codec.bitstream import pack

    with pytest.raises(BitstreamError, match="2 entropy-coded streams per tile"):
        codec.decompress(pack(h, streams * 2))

