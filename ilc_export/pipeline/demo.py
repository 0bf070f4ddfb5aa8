"""The README's main job: one image through real files, bpp and PSNR printed."""
from __future__ import annotations

import time
from pathlib import Path

from .api import BITSTREAM_SUFFIX, DECODED_SUFFIX, CodingError, OutputError, compress_file, decompress_file, open_codec, unique_path
from .image_io import load_rgb
from .metrics import ms_ssim, psnr

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "data" / "kodim23.png"


def run_demo(image: Path | None = None, quality: int | None = None, backend: str | None = None,
             model: str | Path | None = None, out_dir: Path = Path("out"), precision: str | None = None,
             force: bool = False) -> dict:
    """Compress + decompress `image` into `out_dir`. Existing files are kept: the outputs get
    the first free names (NAME.ilc, NAME-2.ilc, ...) unless `force` overwrites NAME.ilc and
    NAME.decoded.png."""
    image = Path(image) if image else SAMPLE_IMAGE
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    codec = open_codec(model, quality, backend, precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    bit = out_dir / (image.stem + BITSTREAM_SUFFIX)
    dec = out_dir / (image.stem + DECODED_SUFFIX)
    if not force:
        bit, dec = unique_path(bit), unique_path(dec)
    t0 = time.perf_counter()
    r = compress_file(codec, image, bit, overwrite=force)
    t1 = time.perf_counter()
    if r.error:
        raise CodingError(r.error)
    d = decompress_file(lambda _data: codec, bit, dec, overwrite=force)
    t2 = time.perf_counter()
    if d.error:
        raise CodingError(d.error)
    orig, _ = load_rgb(image)
    rec, _ = load_rgb(dec)
    return {
        "image": str(image), "height": orig.shape[0], "width": orig.shape[1], "bytes": bit.stat().st_size,
        "bpp": 8 * bit.stat().st_size / (orig.shape[0] * orig.shape[1]), "psnr": psnr(orig, rec),
        "ms_ssim": ms_ssim(orig, rec), "model": codec.cfg.name, "backend": codec.runner.name,
        "bitstream": str(bit), "decoded": str(dec), "encode_s": t1 - t0, "decode_s": t2 - t1,
    }
