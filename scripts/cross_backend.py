"""Cross-backend parity on real images: torch vs ONNX Runtime fp32 (and fp16).

For every image: encode with torch and with ONNX Runtime, decode each file with both
backends (all four pairings), and report PSNR differences, file-size differences and the
number of latent symbols the two encoders chose differently.

    python scripts/cross_backend.py --ckpt reference/ilc_reference/checkpoints/ilc-q2.safetensors \
        --onnx engines/ilc-q2/onnx [--images ../shared/data/kodak] [--json docs/results/cross_backend_q2.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main():
    from rich.progress import track

    from ilc_export.backends import load_backend
    from ilc_export.pipeline.api import expand_inputs
    from ilc_export.pipeline.codec import ImageCodec
    from ilc_export.pipeline.image_io import IMAGE_SUFFIXES, load_rgb
    from ilc_export.pipeline.metrics import psnr

    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    opts = {"threads": args.threads} if args.threads else {}
    codecs = {
        "torch": ImageCodec(load_backend("torch", args.ckpt, **opts)),
        "ort": ImageCodec(load_backend("onnxruntime", args.onnx, **opts)),
        "ort_fp16": ImageCodec(load_backend("onnxruntime", args.onnx, precision="fp16", **opts)),
    }
    ids = {k: c.model_id for k, c in codecs.items()}
    if len(set(ids.values())) != 1:
        raise SystemExit(f"model ids differ: {ids}")
    rows = []
    for f in track(expand_inputs([args.images], IMAGE_SUFFIXES)[: args.limit], description="images"):
        img, _ = load_rgb(f)
        lat = {k: codecs[k].latents(img) for k in ("torch", "ort")}
        sym = {k: codecs[k].symbols(v)[1] for k, v in lat.items()}
        files = {k: codecs[k].compress(img)[0] for k in codecs}
        row = {"image": f.name, "bytes": {k: len(v) for k, v in files.items()},
               "y_symbols_differ": int(np.count_nonzero(sym["torch"] != sym["ort"])),
               "w_symbols_differ": int(np.count_nonzero(lat["torch"]["w_hat"] != lat["ort"]["w_hat"])),
               "symbols": int(sym["torch"].size + lat["torch"]["w_hat"].size), "psnr": {}}
        for enc in ("torch", "ort"):
            for dec in ("torch", "ort"):
                rec, _ = codecs[dec].decompress(files[enc])
                row["psnr"][f"{enc}->{dec}"] = psnr(img, rec)
        row["psnr"]["ort_fp16->ort_fp16"] = psnr(img, codecs["ort_fp16"].decompress(files["ort_fp16"])[0])
        row["psnr"]["torch->ort_fp16"] = psnr(img, codecs["ort_fp16"].decompress(files["torch"])[0])
        rows.append(row)
    ref = [r["psnr"]["torch->torch"] for r in rows]
    summary = {
        "images": len(rows),
        "max_psnr_diff_db": {k: float(max(abs(r["psnr"][k] - t) for r, t in zip(rows, ref))) for k in rows[0]["psnr"]},
        "mean_psnr_db": {k: float(np.mean([r["psnr"][k] for r in rows])) for k in rows[0]["psnr"]},
        "max_size_diff_pct_ort_vs_torch": float(max(abs(r["bytes"]["ort"] / r["bytes"]["torch"] - 1) * 100 for r in rows)),
        "total_size_diff_pct_ort_vs_torch": float((sum(r["bytes"]["ort"] for r in rows) / sum(r["bytes"]["torch"] for r in rows) - 1) * 100),
        "y_symbols_differ": sum(r["y_symbols_differ"] for r in rows),
        "w_symbols_differ": sum(r["w_symbols_differ"] for r in rows),
        "symbols": sum(r["symbols"] for r in rows),
        "same_size_files": sum(r["bytes"]["ort"] == r["bytes"]["torch"] for r in rows),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "per_image": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
