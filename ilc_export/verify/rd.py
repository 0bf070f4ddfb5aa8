"""Rate-distortion evaluation through real files, Pillow anchors, BD-rate.

Results use CompressAI's JSON layout so our curves plot beside the published anchors:
{"name", "description", "results": {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}}
(one entry per quality point, each the mean over images; per-image values under "per_image").
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..contract.files import write_atomic
from ..pipeline.api import expand_inputs
from ..pipeline.image_io import IMAGE_SUFFIXES, load_rgb
from ..pipeline.metrics import ms_ssim, psnr
from ..pipeline.models import encoder_addon_of, model_id, shipped_checkpoint, shipped_qualities


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


class ResultCache:
    """Per-image results on disk (JSON lines), so an interrupted report continues where it stopped.

    Keys include the model id (or codec settings) and the image's name and size, so a changed
    model or image is never served from the cache.
    """

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.rows: dict[str, dict] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    r = json.loads(line)
                    self.rows[r["key"]] = r
                except (ValueError, KeyError):
                    continue  # a line cut by a kill: recompute that image

    @staticmethod
    def key(*parts) -> str:
        return "|".join(str(p) for p in parts)

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, key: str, row: dict) -> None:
        row = {**row, "key": key}
        self.rows[key] = row
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def _image_key(f: Path) -> str:
    st = f.stat()
    return f"{f.name}:{st.st_size}"


def evaluate_codec(directory: Path, qualities: list[int] | None = None, models: list[Path] | None = None,
                   backend: str = "torch", limit: int | None = None, progress=None, name: str = "ILC",
                   kind: str = "ilc", cache: ResultCache | None = None, engine=None, on_summary=None,
                   **opts) -> dict:
    """Every image x quality: compress to a real file, decompress it, measure.

    ``engine`` (``ilc_export.scale``; default: this process) runs the images not in ``cache``;
    the records and the JSON are the same whichever engine computed them; ``on_summary``
    receives the batch's ``Summary`` (throughput, failures by file). Images that fail
    are cached as they complete, then raise: a mean over fewer images would not be comparable."""
    from ..scale.engine import Item, Job, LocalEngine, run_batch

    files = _images(Path(directory), limit)
    if models:
        sources = [Path(m) for m in models]
    else:
        qs = qualities or shipped_qualities(kind)
        if not qs:
            raise ValueError(f"no shipped {kind} qualities found")
        sources = [shipped_checkpoint(q, kind) for q in qs]
    cache = cache or ResultCache(None)
    rows: dict[tuple[int, int], dict] = {}
    todo: list[tuple[int, int, str]] = []
    task = progress.add_task(f"{name} ({backend})", total=len(files) * len(sources), info="") if progress else None
    for si, src in enumerate(sources):
        mid = model_id(src)
        enc = encoder_addon_of(src) if opts.get("encoder_addon", True) else None
        if enc is not None:  # the same model encoding with an add-on writes other files
            mid = f"{mid}+encoder:{enc[:16]}"
        for fi, f in enumerate(files):
            key = cache.key(name, backend, mid, _image_key(f))
            row = cache.get(key)
            if row is None:
                todo.append((si, fi, key))
            else:
                rows[si, fi] = row
                if progress:
                    progress.update(task, advance=1, info=f"{row['model']} {f.name}")

    def done(r, n, total):
        si, fi, key = todo[r.index]
        if r.error is None:
            rows[si, fi] = r.value
            cache.put(key, r.value)
        if progress:
            progress.update(task, advance=1, info=f"{r.value['model'] if r.value else 'failed'} {files[fi].name}")

    if todo:
        used = sorted({si for si, _, _ in todo})
        job = Job("eval", backend=backend, options=dict(opts), models=[str(sources[si]) for si in used])
        items = [Item(files[fi], model=sources[si]) for si, fi, _ in todo]
        batch = run_batch(engine or LocalEngine(), job, items, done)
        if on_summary is not None:
            on_summary(batch.summary)
        if batch.summary.failures:
            first = next(iter(batch.summary.failures.values()))
            from ..pipeline.api import CodingError

            raise CodingError(f"{len(batch.summary.failures)} of {len(items)} evaluations failed; first: {first}")
    points = [[rows[si, fi] for fi in range(len(files))] for si in range(len(sources))]
    return _summarise(name, f"ILC toolkit ({kind}), backend {backend}, real files", points)


def pillow_curve(directory: Path, fmt: str = "JPEG", qualities=None, limit: int | None = None, progress=None,
                 cache: ResultCache | None = None) -> dict:
    """Pillow's JPEG (4:2:0) / WebP / AVIF at a quality sweep, measured here."""
    fmt = fmt.upper()
    qualities = qualities or ([5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95] if fmt == "JPEG" else list(range(5, 100, 10)))
    files = _images(Path(directory), limit)
    cache = cache or ResultCache(None)
    points = []
    task = progress.add_task(f"{fmt} sweep", total=len(qualities) * len(files), info="") if progress else None
    for q in qualities:
        pt = []
        for f in files:
            key = cache.key("pillow", fmt, q, Image.__version__, _image_key(f))
            row = cache.get(key)
            if row is not None:
                pt.append(row)
                if progress:
                    progress.update(task, advance=1, info=f"q{q} {f.name}")
                continue
            img = load_rgb(f)[0]
            buf = io.BytesIO()
            kw = {"quality": q}
            if fmt == "JPEG":
                kw["subsampling"] = 2  # 4:2:0
            t0 = time.perf_counter()
            Image.fromarray(img).save(buf, format=fmt, **kw)
            t1 = time.perf_counter()
            rec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            t2 = time.perf_counter()
            row = {"image": f.name, "bpp": 8 * buf.tell() / (img.shape[0] * img.shape[1]), "psnr": psnr(img, rec),
                   "ms_ssim": ms_ssim(img, rec), "enc": t1 - t0, "dec": t2 - t1, "quality": q}
            cache.put(key, row)
            pt.append(row)
            if progress:
                progress.update(task, advance=1, info=f"q{q} {f.name}")
        points.append(pt)
    return _summarise(f"Pillow {fmt}", f"Pillow {Image.__version__} {fmt}" + (" 4:2:0" if fmt == "JPEG" else ""), points)


def write_results_json(res: dict, path: Path) -> None:
    write_atomic(Path(path), (json.dumps(res, indent=1) + "\n").encode())


def load_results(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _increasing(rate: np.ndarray, quality: np.ndarray) -> bool:
    q = quality[np.argsort(rate)]
    return bool(np.all(np.diff(q) > 0))


def bd_rate(anchor: dict, test: dict, metric: str = "psnr-rgb") -> float:
    """Bjontegaard delta rate (%) of `test` vs `anchor`: cubic fit of log-rate over quality,
    integrated over the overlapping quality range. Negative = test needs fewer bits."""
    ra, da = np.log(np.asarray(anchor["results"]["bpp"])), np.asarray(anchor["results"][metric])
    rt, dt = np.log(np.asarray(test["results"]["bpp"])), np.asarray(test["results"][metric])
    if metric.startswith("ms-ssim"):
        da, dt = -10 * np.log10(1 - da), -10 * np.log10(1 - dt)
    if not (_increasing(ra, da) and _increasing(rt, dt)):
        return float("nan")  # quality must rise with rate, else rate is not a function of quality
    lo, hi = max(da.min(), dt.min()), min(da.max(), dt.max())
    if lo >= hi:
        return float("nan")  # no overlap in quality
    deg = min(3, len(da) - 1, len(dt) - 1)
    pa, pt = np.polyfit(da, ra, deg), np.polyfit(dt, rt, deg)
    ia, it = np.polyint(pa), np.polyint(pt)
    avg = ((np.polyval(it, hi) - np.polyval(it, lo)) - (np.polyval(ia, hi) - np.polyval(ia, lo))) / (hi - lo)
    return float((np.exp(avg) - 1) * 100)


def bd_psnr(anchor: dict, test: dict, metric: str = "psnr-rgb") -> float:
    """Bjontegaard delta quality (dB for PSNR) of `test` vs `anchor` over the overlapping
    log-rate range; usable where two curves share no quality range (BD-rate is then undefined)."""
    ra, da = np.log(np.asarray(anchor["results"]["bpp"])), np.asarray(anchor["results"][metric])
    rt, dt = np.log(np.asarray(test["results"]["bpp"])), np.asarray(test["results"][metric])
    lo, hi = max(ra.min(), rt.min()), min(ra.max(), rt.max())
    if lo >= hi:
        return float("nan")
    deg = min(3, len(da) - 1, len(dt) - 1)
    ia, it = np.polyint(np.polyfit(ra, da, deg)), np.polyint(np.polyfit(rt, dt, deg))
    return float(((np.polyval(it, hi) - np.polyval(it, lo)) - (np.polyval(ia, hi) - np.polyval(ia, lo))) / (hi - lo))
