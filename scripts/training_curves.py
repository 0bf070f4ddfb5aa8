"""ILC against its baseline along the training curves of one equal-time GPU run.

Reads the trainer's logs (``log.jsonl`` or ``.jsonl.gz``, one row per step: loss, bpp, psnr,
step, wall) of the six runs in a weights folder (``{ilc,baseline}-q{1,2,3}.log.jsonl.gz``) and
prints, per quality: the training loss of both models at equal *steps* (the ILC gets about a
third of the baseline's steps in the same time), the slope of loss against ln(step) in the
first phase (constant lr, the last seven eighths of it), and how many steps the ILC would
need, at that slope, to reach the baseline's final loss. This separates "the ILC trains
slower per step" (more steps would close the gap) from "the ILC's curve is flat" (they would
not).

    python scripts/training_curves.py ../shared/weights/h100-2026-11-27/logs --phase-s 386 \
        --json docs/results/training_curves.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path

import numpy as np


def read_log(path: Path) -> dict[str, np.ndarray]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {k: np.array([r[k] for r in rows], np.float64) for k in ("step", "loss", "bpp", "psnr", "wall")}


def mean_near(log: dict, step: float, key: str = "loss", rel: float = 0.1) -> float:
    """Mean of ``key`` over the steps within +-rel of ``step`` (single-batch losses are noisy)."""
    m = (log["step"] > step * (1 - rel)) & (log["step"] <= step * (1 + rel))
    return float(log[key][m].mean()) if m.any() else float("nan")


def compare(folder: Path, phase_s: float) -> dict:
    out = {}
    for q in ("q1", "q2", "q3"):
        logs = {}
        for kind in ("ilc", "baseline"):
            hits = sorted(folder.glob(f"{kind}-{q}.log.jsonl*"))
            if hits:
                logs[kind] = read_log(hits[0])
        if len(logs) < 2:
            continue
        row = {}
        for kind, log in logs.items():
            ph = log["wall"] <= phase_s
            s1 = float(log["step"][ph].max())
            m = ph & (log["step"] >= s1 / 8)
            slope, icpt = np.polyfit(np.log(log["step"][m]), log["loss"][m], 1)
            row[kind] = {"steps": int(log["step"].max()), "phase_steps": int(s1), "slope_per_ln_step": float(slope),
                         "intercept": float(icpt), "final_loss": float(log["loss"][-300:].mean()),
                         "final_bpp": float(log["bpp"][-300:].mean()), "final_psnr": float(log["psnr"][-300:].mean())}
        ilc, base = row["ilc"], row["baseline"]
        equal = [s for s in (500, 1000, 2000, 3000) if s <= ilc["steps"]]
        row["equal_steps"] = {str(s): {k: mean_near(logs[k], s) for k in logs} for s in equal}
        if ilc["slope_per_ln_step"] < 0:
            need = math.exp((base["final_loss"] - ilc["intercept"]) / ilc["slope_per_ln_step"])
        else:
            need = math.inf
        row["ilc_steps_to_baseline_final_loss"] = need
        row["ilc_steps_multiple"] = need / ilc["steps"]
        out[q] = row
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", type=Path, help="folder with {ilc,baseline}-q{1,2,3}.log.jsonl(.gz)")
    ap.add_argument("--phase-s", type=float, default=386.0, help="wall seconds of the first (constant lr) phase")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    res = compare(args.logs, args.phase_s)
    if not res:
        raise SystemExit(f"no ilc/baseline log pairs in {args.logs}")
    for q, r in res.items():
        eq = ", ".join(f"{s}: {v['ilc']:.3f} vs {v['baseline']:.3f}" for s, v in r["equal_steps"].items())
        print(f"{q}: loss at equal steps (ILC vs baseline) {eq}")
        for kind in ("ilc", "baseline"):
            k = r[kind]
            print(f"    {kind:8s} {k['steps']:6d} steps, final loss {k['final_loss']:.4f} ({k['final_bpp']:.3f} bpp, "
                  f"{k['final_psnr']:.2f} dB), slope {k['slope_per_ln_step']:+.4f} per ln(step)")
        print(f"    ILC steps to the baseline's final loss at its slope: {r['ilc_steps_to_baseline_final_loss']:.3g} "
              f"({r['ilc_steps_multiple']:.3g}x its steps)")
    if args.json:
        args.json.write_text(json.dumps({"logs": str(args.logs), "phase_s": args.phase_s, "qualities": res}, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
