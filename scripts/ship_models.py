"""Turn training runs into shipped checkpoints: rename, build codec tables, write the JSON card.

    python scripts/ship_models.py runs/ilc_q1 runs/ilc_q2 ... [--calib ../shared/data/train/bsds500]

Run folder names must be <kind>_q<N>; the shipped file is
reference/ilc_reference/checkpoints/<kind>-q<N>.safetensors. Calibration of the integer
scale network uses training images only (Kodak is for evaluation).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the training images the shipped tables are calibrated on, and how many of them
CALIB_DIR = ROOT.parent / "shared" / "data" / "train" / "bsds500"
CALIB_COUNT = 12


def calib_folder(src: Path, n: int, dst: Path) -> Path:
    from ilc_export.export.tables_build import save_calibration_crops

    return save_calibration_crops(sorted(p for p in src.iterdir() if p.suffix.lower() in {".jpg", ".png"})[:n], dst)


def main():
    import torch

    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_reference.checkpoint import load_model, save_checkpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--calib", type=Path, default=CALIB_DIR)
    ap.add_argument("--calib-count", type=int, default=CALIB_COUNT)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out_dir = ROOT / "reference" / "ilc_reference" / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # named after the source folder: the checkpoint's calibration note names this folder
        calib = calib_folder(args.calib, args.calib_count, Path(tmp) / args.calib.name)
        for run in args.runs:
            kind, q = run.name.split("_q")
            src = run / "model.safetensors"
            info = json.loads((run / "model.json").read_text())["info"]
            model = load_model(src)
            model.cfg.name = f"{kind}-q{q}"
            staged = Path(tmp) / f"{kind}-q{q}.safetensors"
            save_checkpoint(model, staged, info={**info, "shipped_from": run.name})
            mid = finalize_checkpoint(staged, calib)
            dst = out_dir / staged.name
            shutil.copyfile(staged, dst)
            shutil.copyfile(staged.with_suffix(".json"), dst.with_suffix(".json"))
            card = json.loads(dst.with_suffix(".json").read_text())
            card["model_id"] = mid
            dst.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
            print(f"{dst.name}: model id {mid}, steps {info.get('steps')}, lambda {model.cfg.lmbda}")
            retire_addon(dst, mid, run)


def retire_addon(ckpt: Path, model_id: str, run: Path) -> None:
    """An encoder add-on learnt for the model this checkpoint replaces would be refused by every
    encoder: move it out of the checkpoints folder, into the run folder, and say so."""
    from ilc_export.contract.encoder_addon import addon_path, read_addon_meta

    p = addon_path(ckpt)
    if p.is_file() and read_addon_meta(p)["serves"] != model_id:
        dst = run / f"retired-{p.name}"
        shutil.move(p, dst)
        print(f"  {p.name} served the previous model: moved to {dst}; train a new one "
              "(scripts/amortised_refine.py train, then ship)")


if __name__ == "__main__":
    main()
