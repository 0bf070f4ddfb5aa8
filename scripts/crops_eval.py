"""Any checkpoint (shipped, or a training run's weights) through real files on a folder of crops,
and the local BD-rate against another such evaluation: the quick A/B read-out for one lambda.

    python scripts/crops_eval.py --ckpt runs/x/baseline_q2/model.safetensors --crops runs/refine/r1/crops \\
        --json runs/x/eval.json [--vs runs/y/eval.json]

Weights without codec tables (what ilc-train writes) get them first, built as
scripts/ship_models.py builds them (same calibration images), in a temporary copy. Each crop is
compressed to a file and decoded on the torch backend (an ILC's encoder add-on is used where the
checkpoint has one beside it). With --vs: per crop, the local BD-rate
exp(ln(bpp / bpp_vs) - (PSNR - PSNR_vs) / slope) - 1, and over the crops exp(mean ln(...)) - 1
(docs/research.md section 2: slope 1.547 dB per ln(bpp), the ILC curve's at q2).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ilc_export.contract.encoder_addon import addon_path


def has_tables(path: Path) -> bool:
    from safetensors import safe_open

    from ilc_export.contract.model_id import TABLE_PREFIX

    with safe_open(str(path), "np") as f:
        return any(k.startswith(TABLE_PREFIX) for k in f.keys())


def evaluate(ckpt: Path, crops: list[Path], threads: int = 1) -> list[dict]:
    import torch

    from ilc_export.pipeline.api import open_codec
    from ilc_export.pipeline.image_io import load_rgb
    from ilc_export.pipeline.metrics import psnr

    torch.set_num_threads(threads)
    codec = open_codec(ckpt, backend="torch")
    rows = []
    for p in crops:
        img, _ = load_rgb(p)
        data, _ = codec.compress(img)
        rec, _ = codec.decompress(data)
        rows.append({"image": p.name, "bytes": len(data), "bpp": 8 * len(data) / (img.shape[0] * img.shape[1]),
                     "psnr": psnr(img, rec)})
    return rows


def local_bd(rows: list[dict], ref: list[dict], slope: float) -> dict:
    by = {r["image"]: r for r in ref}
    d = {r["image"]: math.log(r["bpp"] / by[r["image"]]["bpp"]) - (r["psnr"] - by[r["image"]]["psnr"]) / slope
         for r in rows if r["image"] in by}
    if not d:
        raise SystemExit("--vs: no crop in common")
    v = np.array(list(d.values()))
    return {"local_bd_rate": math.exp(float(v.mean())) - 1, "better": int((v < 0).sum()), "crops": len(v),
            "worst": math.exp(float(v.max())) - 1}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--crops", type=Path, required=True, help="folder of .png crops")
    ap.add_argument("--json", type=Path, required=True, help="where the per-crop results go (never overwritten)")
    ap.add_argument("--vs", type=Path, default=None, help="another --json to compare with (same crops)")
    ap.add_argument("--slope", type=float, default=1.547, help="dB per ln(bpp) for the local BD-rate")
    ap.add_argument("--calib", type=Path, default=None, help="images to calibrate new tables on "
                    "(default: scripts/ship_models.py's)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    crops = sorted(a.crops.glob("*.png"))
    if not crops:
        raise SystemExit(f"{a.crops}: no .png crops")
    if not a.ckpt.is_file():
        raise SystemExit(f"{a.ckpt}: no such checkpoint")
    if a.json.exists():
        raise SystemExit(f"{a.json} exists; choose another path")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = a.ckpt
        if not has_tables(ckpt):
            from ship_models import CALIB_COUNT, CALIB_DIR, calib_folder

            from ilc_export.export.tables_build import finalize_checkpoint

            calib = a.calib or CALIB_DIR
            ckpt = Path(tmp) / a.ckpt.name
            shutil.copyfile(a.ckpt, ckpt)
            if a.ckpt.with_suffix(".json").exists():
                shutil.copyfile(a.ckpt.with_suffix(".json"), ckpt.with_suffix(".json"))
            finalize_checkpoint(ckpt, calib_folder(calib, CALIB_COUNT, Path(tmp) / calib.name))
            if addon_path(a.ckpt).is_file():  # tables change the model id; the add-on must serve the new one
                from ilc_export.contract.model_id import model_id_of_file
                from ilc_reference.encoder_addon import relabel_addon

                relabel_addon(addon_path(a.ckpt), addon_path(ckpt), model_id_of_file(ckpt))
        addon = addon_path(ckpt).is_file()
        rows = evaluate(ckpt, crops, a.threads)
    out = {"ckpt": str(a.ckpt), "crops": str(a.crops), "encoder_addon": addon,
           "bpp": float(np.mean([r["bpp"] for r in rows])), "psnr": float(np.mean([r["psnr"] for r in rows])),
           "rows": rows}
    line = (f"{a.ckpt}{' + encoder add-on' if addon else ''}: {len(rows)} crops, bpp {out['bpp']:.4f}, "
            f"PSNR {out['psnr']:.3f} dB")
    if a.vs:
        out["vs"] = {"json": str(a.vs), "slope": a.slope, **local_bd(rows, json.loads(a.vs.read_text())["rows"], a.slope)}
        v = out["vs"]
        line += (f"; vs {a.vs}: local BD-rate {100 * v['local_bd_rate']:+.1f} %, {v['better']} of {v['crops']} "
                 f"crops better (worst {100 * v['worst']:+.1f} %)")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1) + "\n")
    print(line)


if __name__ == "__main__":
    main()
