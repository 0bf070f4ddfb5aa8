"""Rate-distortion evaluation through real files, Pillow anchors, BD-rate.

Results use CompressAI's JSON layout so our curves plot beside the published anchors:
{"name", "description", "results": {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}}
(one entry per quality point, each the mean over images; per-image values under "per_image").
"""
from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..codec.bitstream import write_atomic
from ..pipeline.api import BITSTREAM_SUFFIX, expand_inputs, open_codec
from ..pipeline.image_io import IMAGE_SUFFIXES, load_rgb
from ..pipeline.metrics import ms_ssim, psnr
from ..pipeline.models import shipped_checkpoint, shipped_qualities


def _images(directory: Path, limit: int | None) -> list[Path]:
    files = expand_inputs([directory], IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{directory}: no images")
    return files[:limit] if limit else files


def _summarise(name: str, description: str, points: list[list[dict]]) -> dict:
    keys = {"bpp": "bpp", "psnr-rgb": "psnr", "ms-ssim-rgb": "ms_ssim", "encoding_time": "enc", "decoding_time": "dec"}
    res = {k: [float(np.mean([r[v] for r in pt])) for pt in points] for k, v in keys.items()}
    order = np.argsort(res["bpp"])
    res = {k: [v[i] for i in order] for k, v in res.items()}
    return {"name": name, "description": description, "results": res,
            "per_image": [points[i] for i in order]}


def evaluate_codec(directory: Path, qualities: list[int] | None = None, models: list[Path] | None = None,
                   backend: str = "torch", limit: int | None = None, progress=None, name: str = "ILC", **opts) -> dict:
    """Every image x quality: compress to a real file, decompress it, measure (SPEC section 5)."""
    files = _images(Path(directory), limit)
    if models:
        sources = [Path(m) for m in models]
    else:
        qs = qualities or shipped_qualities()
        if not qs:
            raise ValueError("no shipped qualities found")
        sources = [shipped_checkpoint(q) for q in qs]
    points = []
    task = progress.add_task(f"eval {backend}", total=len(files) * len(sources), info="") if progress else None
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            codec = open_codec(src, None, backend, **opts)
            pt = []
            for f in files:
                img, _ = load_rgb(f)
                t0 = time.perf_counter()
                data, _ = codec.compress(img)
                bit = Path(tmp) / (f.stem + BITSTREAM_SUFFIX)
                write_atomic(bit, data)
                t1 = time.perf_counter()
                rec, st = codec.decompress(bit.read_bytes())
                t2 = time.perf_counter()
                n = bit.stat().st_size
                pt.append({"image": f.name, "bpp": 8 * n / (img.shape[0] * img.shape[1]), "psnr": psnr(img, rec),
                           "ms_ssim": ms_ssim(img, rec), "enc": t1 - t0, "dec": t2 - t1,
                           "entropy_enc": None, "bytes": n, "model": codec.cfg.name})
                if progress:
                    progress.update(task, advance=1, info=f"{codec.cfg.name} {f.name}")
            points.append(pt)
    return _summarise(name, f"ILC toolkit, backend {backend}, real files", points)


def pillow_curve(directory: Path, fmt: str = "JPEG", qualities=None, limit: int | None = None, progress=None) -> dict:
    """Pillow's JPEG (4:2:0) / WebP / AVIF at a quality sweep, measured here."""
    fmt = fmt.upper()
    qualities = qualities or ([5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95] if fmt == "JPEG" else list(range(5, 100, 10)))
    files = _images(Path(directory), limit)
    imgs = [load_rgb(f)[0] for f in files]
    points = []
    task = progress.add_task(f"{fmt} sweep", total=len(qualities) * len(files), info="") if progress else None
    for q in qualities:
        pt = []
        for f, img in zip(files, imgs):
            buf = io.BytesIO()
            kw = {"quality": q}
            if fmt == "JPEG":
                kw["subsampling"] = 2  # 4:2:0
            t0 = time.perf_counter()
            Image.fromarray(img).save(buf, format=fmt, **kw)
            t1 = time.perf_counter()
            rec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            t2 = time.perf_counter()
            pt.append({"image": f.name, "bpp": 8 * buf.tell() / (img.shape[0] * img.shape[1]), "psnr": psnr(img, rec),
                       "ms_ssim": ms_ssim(img, rec), "enc": t1 - t0, "dec": t2 - t1, "quality": q})
            if progress:
                progress.update(task, advance=1, info=f"q{q} {f.name}")
        points.append(pt)
    return _summarise(f"Pillow {fmt}", f"Pillow {Image.__version__} {fmt}" + (" 4:2:0" if fmt == "JPEG" else ""), points)


def write_results_json(res: dict, path: Path) -> None:
    write_atomic(Path(path), (json.dumps(res, indent=1) + "\n").encode())


def load_results(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def bd_rate(anchor: dict, test: dict, metric: str = "psnr-rgb") -> float:
    """Bjontegaard delta rate (%) of `test` vs `anchor`: cubic fit of log-rate over quality,
    integrated over the overlapping quality range. Negative = test needs fewer bits."""
    ra, da = np.log(np.asarray(anchor["results"]["bpp"])), np.asarray(anchor["results"][metric])
    rt, dt = np.log(np.asarray(test["results"]["bpp"])), np.asarray(test["results"][metric])
    if metric.startswith("ms-ssim"):
        da, dt = -10 * np.log10(1 - da), -10 * np.log10(1 - dt)
    lo, hi = max(da.min(), dt.min()), min(da.max(), dt.max())
    if lo >= hi:
        return float("nan")  # no overlap in quality
    deg = min(3, len(da) - 1, len(dt) - 1)
    pa, pt = np.polyfit(da, ra, deg), np.polyfit(dt, rt, deg)
    ia, it = np.polyint(pa), np.polyint(pt)
    avg = ((np.polyval(it, hi) - np.polyval(it, lo)) - (np.polyval(ia, hi) - np.polyval(ia, lo))) / (hi - lo)
    return float((np.exp(avg) - 1) * 100)
