"""Model-card numbers from the float checkpoints: estimated bpp (likelihoods), PSNR, MS-SSIM
per shipped model on Kodak, in CompressAI's JSON format, plus invertibility of f and the
PSNR ceiling that decoding with z = 0 puts on each ILC (f^-1(y, 0) with y unquantised).

    python scripts/reference_card.py [--images ../shared/data/kodak] [--out docs/results/reference_estimated.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    from ilc_export.pipeline.api import expand_inputs
    from ilc_export.pipeline.image_io import IMAGE_SUFFIXES
    from ilc_export.pipeline.models import shipped_checkpoints
    from ilc_export.verify.reference_eval import evaluate_reference, invertibility_error
    from ilc_export.contract.model_id import model_id_of_file
    from ilc_reference.checkpoint import load_model
    from ilc_reference.encoder_addon import addon_for

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "reference_estimated.json")
    args = ap.parse_args()
    files = expand_inputs([args.images], IMAGE_SUFFIXES)
    out, inv, ceiling, addon_ceiling = {}, {}, {}, {}
    for kind in ("ilc", "baseline"):
        ckpts = shipped_checkpoints(kind)
        rows = []
        for c in ckpts:
            model = load_model(c)
            rows.append(evaluate_reference(model, files, correction=addon_for(c, model_id_of_file(c))))
            if kind == "ilc":
                inv[c.stem] = invertibility_error(model, files[0])
                ceiling[c.stem] = rows[-1]["z_zero_ceiling_psnr"]
                if rows[-1]["addon_ceiling_psnr"] is not None:
                    addon_ceiling[c.stem] = rows[-1]["addon_ceiling_psnr"]
        for c, r in zip(ckpts, rows):
            print(f"{c.stem}: est {r['bpp']:.4f} bpp, PSNR {r['psnr']:.2f} dB, MS-SSIM {r['ms_ssim']:.4f}")
        out[kind] = {
            "name": f"{kind} reference (estimated rate)",
            "description": "float model, rate from likelihoods (not real files), Kodak",
            "results": {"bpp": [r["bpp"] for r in rows], "psnr-rgb": [r["psnr"] for r in rows],
                        "ms-ssim-rgb": [r["ms_ssim"] for r in rows]},
            "models": [c.stem for c in ckpts],
        }
    print("max |f^-1(f(x)) - x| on", files[0].name, inv)
    out["invertibility_max_abs"] = {"image": files[0].name, **inv}
    print("PSNR of f^-1(y, z=0), y unquantised (the z = 0 ceiling):", {k: round(v, 2) for k, v in ceiling.items()})
    out["z_zero_ceiling_psnr"] = ceiling
    if addon_ceiling:
        print("the same with the encoder add-on's corrected y:", {k: round(v, 2) for k, v in addon_ceiling.items()})
        out["addon_ceiling_psnr"] = addon_ceiling
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
