"""A/B of encoder-side latent refinement through real files (ILC and baseline, same crops).

    python scripts/refine_ab.py run    --out runs/refine/r1 --kind ilc      [--iters 60 --lr 0.003]
    python scripts/refine_ab.py run    --out runs/refine/r1 --kind baseline
    python scripts/refine_ab.py report --out runs/refine/r1

`run` writes centre crops of the Kodak images (--crop px a side; 0: whole images) once, then for every
shipped quality and crop compresses to a real file without and with refinement, decodes it
with the unchanged decoder and appends one record to <out>/<kind>.jsonl (resumable).
`report` adds Pillow JPEG on the same crops and prints BD-rates (Bjontegaard, PSNR-RGB).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ilc_export.pipeline.api import open_codec
from ilc_export.pipeline.image_io import load_rgb
from ilc_export.pipeline.metrics import psnr
from ilc_export.pipeline.models import shipped_checkpoint, shipped_qualities
from ilc_export.verify.rd import bd_rate, pillow_curve
from ilc_reference.refine import DEFAULT_ITERS, DEFAULT_LR

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def make_crops(src: Path, dst: Path, crop: int) -> list[Path]:
    """Centre crops crop x crop of src/*.png written to dst (crop 0: the images themselves)."""
    if crop <= 0:
        return sorted(src.glob("*.png"))
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(src.glob("*.png")):
        q = dst / p.name
        if not q.exists():
            img = load_rgb(p)[0]
            t, l = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
            Image.fromarray(img[t:t + crop, l:l + crop]).save(q)
        out.append(q)
    return out


def run(a) -> None:
    torch.set_num_threads(a.threads)
    crops = make_crops(Path(a.images), Path(a.out) / "crops", a.crop)[:a.limit or None]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    log = Path(a.out) / f"{a.kind}.jsonl"
    done = set()
    if log.exists():
        done = {(r["q"], r["image"], r["iters"]) for r in map(json.loads, log.read_text().splitlines())}
    qualities = shipped_qualities(a.kind)
    if a.q:
        wanted = [int(v) for v in a.q.split(",")]
        if not set(wanted) <= set(qualities):
            raise SystemExit(f"--q {a.q}: the shipped {a.kind} qualities are {qualities}")
        qualities = wanted
    for q in qualities:
        ckpt = shipped_checkpoint(q, a.kind)
        base = open_codec(ckpt, backend="torch", device=a.device)
        refining = open_codec(ckpt, backend="torch", device=a.device, refine=a.iters, refine_lr=a.lr)
        for p in crops:
            img = load_rgb(p)[0]
            for iters in (0, a.iters):
                if (q, p.name, iters) in done:
                    continue
                codec = refining if iters else base  # the torch backend's REFINE: ilc-run compress --refine
                t = time.perf_counter()
                data, _ = codec.compress(img)
                enc = time.perf_counter() - t
                out, _ = base.decompress(data)  # the unchanged decoder
                rec = {"q": q, "image": p.name, "iters": iters, "lr": a.lr if iters else 0.0,
                       "bpp": 8 * len(data) / (img.shape[0] * img.shape[1]), "psnr": psnr(out, img), "enc_s": enc}
                with log.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(a.kind, json.dumps(rec), flush=True)


def curve(records: list[dict], name: str) -> dict:
    qs = sorted({r["q"] for r in records})
    res = {"bpp": [], "psnr-rgb": []}
    for q in qs:
        pts = [r for r in records if r["q"] == q]
        res["bpp"].append(float(np.mean([r["bpp"] for r in pts])))
        res["psnr-rgb"].append(float(np.mean([r["psnr"] for r in pts])))
    return {"name": name, "results": res, "images": len({r["image"] for r in records})}


def report(a) -> None:
    out = Path(a.out)
    curves = {}
    recs_of = {k: [json.loads(s) for s in (out / f"{k}.jsonl").read_text().splitlines()] for k in ("ilc", "baseline")}
    # only images every (kind, quality, iters) has, so all curves average the same images
    keys = {(r["q"], r["iters"], k) for k, recs in recs_of.items() for r in recs}
    common = set.intersection(*({r["image"] for r in recs_of[k] if (r["q"], r["iters"]) == (q, i)} for q, i, k in keys))
    images = sorted(common)
    assert images == sorted(p.name for p in make_crops(Path(a.images), out / "crops", a.crop))[:len(images)], \
        "report needs the first N images of the sorted set (Pillow's curve is computed on those)"
    for kind in ("ilc", "baseline"):
        recs = [r for r in recs_of[kind] if r["image"] in common]
        for iters in sorted({r["iters"] for r in recs}):
            sel = [r for r in recs if r["iters"] == iters]
            curves[f"{kind} refine {iters}" if iters else kind] = curve(sel, kind)
    jpeg_file = out / f"pillow_jpeg_{len(images)}.json"
    if not jpeg_file.exists():
        crops = out / "crops"
        jpeg_file.write_text(json.dumps(pillow_curve(crops if crops.is_dir() else Path(a.images), "JPEG",
                                                     limit=len(images))))
    curves["Pillow JPEG"] = json.loads(jpeg_file.read_text())
    names = [n for n in curves if n != "Pillow JPEG"]
    lines = ["| curve | images | bpp (q1/q2/q3) | PSNR (q1/q2/q3) | vs Pillow JPEG | vs ILC | vs baseline |",
             "|---|---|---|---|---|---|---|"]
    table = {}
    for n in names:
        c = curves[n]
        row = {k: bd_rate(curves[k], c) for k in ("Pillow JPEG", "ilc", "baseline") if k in curves}
        table[n] = {"curve": c["results"], "bd_rate": row}
        lines.append(f"| {n} | {c.get('images', '')} | {' / '.join(f'{v:.3f}' for v in c['results']['bpp'])} | "
                     f"{' / '.join(f'{v:.2f}' for v in c['results']['psnr-rgb'])} | " +
                     " | ".join(f"{row.get(k, float('nan')):+.1f} %" for k in ("Pillow JPEG", "ilc", "baseline")) + " |")
    (out / "refine_ab.json").write_text(json.dumps(table, indent=1))
    (out / "refine_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phase", choices=["run", "report"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--kind", choices=["ilc", "baseline"], default="ilc")
    ap.add_argument("--images", default=str(KODAK))
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--iters", type=int, default=DEFAULT_ITERS)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--q", default="", help="only these qualities, in this order (e.g. 2,3); default: all")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (sorted); 0: all")
    ap.add_argument("--device", default="cpu", help="torch device of the encoder and decoder (cpu, cuda)")
    a = ap.parse_args()
    run(a) if a.phase == "run" else report(a)


if __name__ == "__main__":
    main()
