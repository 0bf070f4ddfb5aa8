"""Kodak-wide checks of the entropy-coding runtime, for every shipped quality:

- decodability when the encoder's float path is perturbed (1e-3 relative noise);
- real file bits vs the float model's estimated bits (header + coder overhead);
- rate cost of the integer scale path vs the float model's scale indices.

    python scripts/runtime_checks.py [--images ../shared/data/kodak] [--out docs/results/runtime_checks.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main():
    import torch
    from rich.progress import track

    from ilc_export.pipeline.api import expand_inputs, open_codec
    from ilc_export.pipeline.image_io import IMAGE_SUFFIXES, load_rgb, model_input
    from ilc_export.pipeline.models import shipped_checkpoint, shipped_qualities
    from ilc_export.verify.robust import perturbed_round_trip
    from ilc_reference.entropy import scale_index_from_log

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "runtime_checks.json")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    files = expand_inputs([args.images], IMAGE_SUFFIXES)[: args.limit]
    report = {}
    for q in shipped_qualities():
        # the runtime against the float model it was derived from: without the encoder add-on,
        # which the float model's own estimate below does not know
        codec = open_codec(shipped_checkpoint(q), backend="torch", encoder_addon=False)
        model = codec.runner.model
        rows = []
        for f in track(files, description=f"q{q}"):
            img, _ = load_rgb(f)
            data, st = codec.compress(img)
            rec, _ = codec.decompress(data)
            lat = codec.latents(img)
            _, y_sym = codec.symbols(lat)
            with torch.inference_mode():
                v = model.hyper_scale(torch.from_numpy(lat["w_hat"][None].astype(np.float32)))
            float_idx = scale_index_from_log(v)[0].numpy()
            int_idx = codec.entropy.scale_indices(lat["w_hat"])
            b_int = codec.entropy.estimate_bits(lat["w_hat"], y_sym, int_idx)["total"]
            b_float = codec.entropy.estimate_bits(lat["w_hat"], y_sym, float_idx)["total"]
            # the float model's own estimate (continuous sigma, float CDFs)
            with torch.inference_mode():
                out = model(torch.from_numpy(model_input(img)), quant="round")
            est = float(out["bits"])
            pr = perturbed_round_trip(codec, img, rel=1e-3, seed=len(rows), ref=lat)
            rows.append({
                "image": f.name, "file_bits": 8 * len(data), "float_model_bits": est,
                "int_index_bits": b_int, "float_index_bits": b_float,
                "index_agreement": float(np.mean(int_idx == float_idx)),
                "perturbed_decodes": pr["decoded_same_symbols"], "perturbed_y_changed": pr["y_changed"],
                "perturbed_w_changed": pr["w_changed"], "symbols": pr["symbols"],
            })
        tot = lambda k: sum(r[k] for r in rows)  # noqa: E731
        report[f"q{q}"] = {
            "images": len(rows),
            "file_vs_float_model_estimate_pct": 100 * (tot("file_bits") / tot("float_model_bits") - 1),
            "file_vs_table_estimate_pct": 100 * (tot("file_bits") / tot("int_index_bits") - 1),
            "integer_vs_float_index_rate_pct": 100 * (tot("int_index_bits") / tot("float_index_bits") - 1),
            "index_agreement_min": min(r["index_agreement"] for r in rows),
            "perturbed_all_decode": all(r["perturbed_decodes"] for r in rows),
            "perturbed_symbols_changed": tot("perturbed_y_changed") + tot("perturbed_w_changed"),
            "symbols": tot("symbols"),
            "per_image": rows,
        }
        s = report[f"q{q}"]
        print(f"q{q}: file vs float-model estimate {s['file_vs_float_model_estimate_pct']:+.2f}%, file vs table estimate "
              f"{s['file_vs_table_estimate_pct']:+.2f}%, integer vs float index rate {s['integer_vs_float_index_rate_pct']:+.3f}%, "
              f"perturbed: all decode={s['perturbed_all_decode']} ({s['perturbed_symbols_changed']} of {s['symbols']} symbols moved)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
