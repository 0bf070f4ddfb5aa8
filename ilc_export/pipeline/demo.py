"""The README's main job: one image through real files, bpp and PSNR printed."""
from __future__ import annotations

import time
from pathlib import Path

from .api import BITSTREAM_SUFFIX, compress_file, decompress_file, open_codec
from .image_io import load_rgb
from .metrics import ms_ssim, psnr

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "data" / "kodim23.png"


def run_demo(image: Path | None = None, quality: int | None = None, backend: str = "torch",
             model: Path | None = None, out_dir: Path = Path("out")) -> dict:
    image = Path(image) if image else SAMPLE_IMAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    codec = open_codec(model, quality, backend)
    bit = out_dir / (image.stem + BITSTREAM_SUFFIX)
    dec = out_dir / (image.stem + ".decoded.png")
    t0 = time.perf_counter()
    r = compress_file(codec, image, bit)
    t1 = time.perf_counter()
    if r.error:
        raise ValueError(r.error)
    d = decompress_file(lambda _data: codec, bit, dec)
    t2 = time.perf_counter()
    if d.error:
        raise ValueError(d.error)
    orig, _ = load_rgb(image)
    rec, _ = load_rgb(dec)
    return {
        "image": str(image), "height": orig.shape[0], "width": orig.shape[1], "bytes": bit.stat().st_size,
        "bpp": 8 * bit.stat().st_size / (orig.shape[0] * orig.shape[1]), "psnr": psnr(orig, rec),
        "ms_ssim": ms_ssim(orig, rec), "model": codec.cfg.name, "bitstream": str(bit), "decoded": str(dec),
        "encode_s": t1 - t0, "decode_s": t2 - t1,
    }
