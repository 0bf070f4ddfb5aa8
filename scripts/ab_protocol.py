"""Equal-budget A/B protocol for ILC research ideas (docs/research.md).

Two (or more) arms train side by side, at the same time, on the same device, for the same
wall time, from the same seed (so the same crop sequence), on the same training split, each
initialised from the GPU-trained weights where the architecture allows (new modules start
so that the model starts as the init: g's last conv is zero). Each result is then finalized
(codec tables, the ship path) and evaluated through real files on Kodak and on a held-out
split of the training data that no arm trains on.

    python scripts/ab_protocol.py prepare --out runs/ab/r1 --arms A B
    python scripts/ab_protocol.py train   --out runs/ab/r1 --minutes 30 [--device cpu --threads 1 --nice 10]
    python scripts/ab_protocol.py eval    --out runs/ab/r1 [--limit N]
    python scripts/ab_protocol.py report  --out runs/ab/r1           # -> runs/ab/r1/ab.json + ab.md
    python scripts/ab_protocol.py all     --out runs/ab/r1 --minutes 30 --arms A B

Comparison (documented choice): the arms train ONE lambda (q2, 0.0067), so a full BD-rate
(>= 2-4 points) per arm is not available on a CPU budget. Each arm is one Kodak point; we
report, for arm vs arm:
  dPSNR (dB) and dbpp (%) at the same lambda, and the *local BD-rate*:
      rate change at equal PSNR = exp(ln(bpp_B / bpp_A) - (PSNR_B - PSNR_A) / s) - 1,
  where s = dPSNR / d ln(bpp) is the slope of the reference ILC curve at q2 (mean slope of its
  q1-q2 and q2-q3 segments, the GPU ILC of ../shared/weights: the curve shape B moves along);
and for arm vs a curve (the current ILC, the equal-budget baseline, Pillow JPEG):
      point-vs-curve BD-rate = bpp_arm / bpp_curve(PSNR_arm) - 1,
  with ln(bpp) interpolated linearly in PSNR between the curve's points (extrapolated from the
  end segment outside them). With a 3-point arm (--lmbdas) `report` also gives the true
  Bjontegaard BD-rate (ilc_export.verify.rd.bd_rate).

Held-out split: every 25th file of sorted bsds500/*.jpg (20 images) and every 40th of sorted
sunhays80/*.png (2 images), listed in HELDOUT; training uses every other file of
../shared/data/train (via a folder of symlinks). Caveat: the GPU init weights saw these files;
the split is held out from the A/B continuation only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = next((Path(p) for p in (os.environ.get("ILC_SHARED"), ROOT / "shared", ROOT.parent / "shared",
                                 ROOT.parent.parent / "shared") if p and (Path(p) / "data").exists()),
              ROOT.parent / "shared")  # ILC_SHARED=<folder with data/ and weights/> overrides
DATA = SHARED / "data" / "train"
KODAK = SHARED / "data" / "kodak"
GPU_WEIGHTS = SHARED / "weights" / "h100-2026-11-27"
PY = sys.executable
ENV_PATH = f"{ROOT}:{ROOT / 'reference'}"

#: held-out split (never trained on by any arm); relative to DATA
HELDOUT = [f"bsds500/{n}" for n in sorted(p.name for p in (DATA / "bsds500").glob("*.jpg"))[::25]] + \
          [f"sunhays80/{n}" for n in sorted(p.name for p in (DATA / "sunhays80").glob("*.png"))[::40]] \
    if DATA.exists() else []

LAMBDAS = {1: 0.0025, 2: 0.0067, 3: 0.018}

#: the arms: config overrides on the GPU ilc-q2 config, and the trainer's lr
ARMS = {
    "A": {"desc": "current ILC (z = 0), continued", "config": {}},
    "B": {"desc": "ILC + g (z_hat = g(y_hat)), f and g trained jointly through the inverse",
          "config": {"z_model": "g", "g_hidden": 64, "g_lr_scale": 10.0}},
    "C": {"desc": "ILC + g that also corrects y_hat's quantisation error before the inverse (g_refine_y)",
          "config": {"z_model": "g", "g_hidden": 64, "g_lr_scale": 10.0, "g_refine_y": True}},
    "B50": {"desc": "B with g learning 5x faster (g_lr_scale 50: g at 1e-3 when f is at 2e-5)",
            "config": {"z_model": "g", "g_hidden": 64, "g_lr_scale": 50.0}},
    "C50": {"desc": "C with g learning 5x faster (g_lr_scale 50)",
            "config": {"z_model": "g", "g_hidden": 64, "g_lr_scale": 50.0, "g_refine_y": True}},
    "B0": {"desc": "ILC + g, beta = 0 (no z-term: image error only)",
           "config": {"z_model": "g", "g_hidden": 64, "g_lr_scale": 10.0, "beta": 0.0}},
}

# reference curves (Kodak, 24 images, real files, torch backend; ../shared/weights/h100-2026-11-27/SOURCE.md)
GPU_CURVES = {
    "ilc_gpu": {"bpp": [0.201, 0.344, 0.514], "psnr-rgb": [26.84, 27.74, 28.31]},
    "baseline_gpu": {"bpp": [0.244, 0.421, 0.632], "psnr-rgb": [27.97, 29.56, 30.63]},
}


def _env():
    return {**os.environ, "PYTHONPATH": ENV_PATH + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}


# --- prepare ------------------------------------------------------------------------------

def _link_split(out: Path) -> tuple[Path, Path]:
    """Folders of symlinks: train/ (DATA minus HELDOUT) and heldout/ (HELDOUT)."""
    held = set(HELDOUT)
    tr, ho = out / "data" / "train", out / "data" / "heldout"
    for d in (tr, ho):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    n = 0
    for sub in ("bsds500", "sunhays80"):
        for p in sorted((DATA / sub).iterdir()):
            if p.suffix.lower() not in {".jpg", ".png"}:
                continue
            rel = f"{sub}/{p.name}"
            dst = (ho if rel in held else tr) / f"{sub}__{p.name}"
            dst.symlink_to(p)
            n += rel not in held
    (out / "data" / "heldout.txt").write_text("\n".join(HELDOUT) + "\n")
    print(f"split: {n} training files, {len(HELDOUT)} held out")
    return tr, ho


def _init_file(arm: str, q: int, out: Path) -> Path:
    """GPU ilc-q<q> weights, plus fresh modules the arm's config adds (seed 0; g's last conv = 0)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ilc_export.contract.config import ModelConfig
    from ilc_export.contract.model_id import TABLE_PREFIX
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.model import build_model

    src = GPU_WEIGHTS / f"ilc-q{q}.safetensors"
    over = ARMS[arm]["config"]
    if not over:
        return src
    with safe_open(str(src), framework="np") as f:
        base = json.loads(f.metadata()["config"])
    cfg = ModelConfig.from_dict({**base, **over, "name": f"{arm}_q{q}"})
    torch.manual_seed(0)
    model = build_model(cfg)
    sd = {k: v for k, v in load_file(str(src)).items() if not k.startswith(TABLE_PREFIX)}
    res = model.load_state_dict(sd, strict=False)
    if res.unexpected_keys or any(not k.startswith("g.") for k in res.missing_keys):
        raise SystemExit(f"arm {arm}: init does not fit: {res}")
    return save_checkpoint(model, out / "init" / f"{arm}_q{q}", info={"init_from": str(src), "new": res.missing_keys})


def prepare(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _link_split(out)
    plan = {"arms": {}, "qualities": args.qualities, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for arm in args.arms:
        for q in args.qualities:
            init = _init_file(arm, q, out)
            from safetensors import safe_open

            with safe_open(str(init), framework="np") as f:
                cfg = json.loads(f.metadata()["config"])
            cfg.update(ARMS[arm]["config"])
            cfg.pop("name", None)
            cfg.pop("kind", None)
            cpath = out / "init" / f"{arm}_q{q}.config.json"
            cpath.parent.mkdir(parents=True, exist_ok=True)
            cpath.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            plan["arms"][f"{arm}_q{q}"] = {"arm": arm, "q": q, "init": str(init), "config": str(cpath),
                                           "desc": ARMS[arm]["desc"]}
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    print(f"wrote {out / 'plan.json'}")


# --- train --------------------------------------------------------------------------------

def train_commands(out: Path, plan: dict, args) -> dict[str, list[str]]:
    cmds = {}
    for run, a in plan["arms"].items():
        cmd = ["nice", "-n", str(args.nice)] if args.nice else []
        cmd += [PY, "-m", "ilc_reference.train", "--data", str(out / "data" / "train"), "--out", str(out / run),
                "--kind", "ilc", "--name", run, "--config", a["config"], "--init", a["init"],
                "--lmbda", str(LAMBDAS[a["q"]]), "--lr", str(args.lr), "--seed", str(args.seed),
                "--crop", *[str(c) for c in args.crop], "--pixels", str(args.pixels), "--steps", "1000000",
                "--max-minutes", str(args.minutes), "--threads", str(args.threads), "--device", args.device,
                "--ckpt-every", "100", "--quiet"]
        cmds[run] = cmd
    return cmds


def train(args) -> None:
    out = Path(args.out)
    plan = json.loads((out / "plan.json").read_text())
    cmds = train_commands(out, plan, args)
    procs = {}
    for run, cmd in cmds.items():
        print(" ".join(cmd))
        procs[run] = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=open(out / f"{run}.stdout", "w"),
                                      stderr=subprocess.STDOUT)
    plan["train"] = {"commands": {r: " ".join(c) for r, c in cmds.items()}, "minutes": args.minutes,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    rcs = {r: p.wait() for r, p in procs.items()}
    if any(rcs.values()):
        raise SystemExit(f"training failed: {rcs}")
    for run in cmds:
        steps = sum(1 for _ in open(out / run / "log.jsonl"))
        print(f"{run}: {steps} steps")


# --- eval ---------------------------------------------------------------------------------

def _calib(out: Path, n: int = 12) -> Path:
    """Calibration images for the integer scale net: first n training-split BSDS images, cropped
    to multiples of 64 (as scripts/ship_models.py)."""
    from ilc_export.export.tables_build import save_calibration_crops

    dst = out / "data" / "calib"
    if dst.exists() and len(list(dst.iterdir())) == n:
        return dst
    files = sorted(p for p in (out / "data" / "train").iterdir() if p.name.startswith("bsds500__"))[:n]
    return save_calibration_crops(files, dst)


def _finalize(src: Path, dst: Path, calib: Path) -> str:
    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_reference.checkpoint import load_model, save_checkpoint

    dst.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(src)
    save_checkpoint(model, dst, info={"from": str(src)})
    return finalize_checkpoint(dst, calib)


def evaluate(args) -> None:
    import torch

    from ilc_export.verify.rd import ResultCache, evaluate_codec
    from ilc_export.verify.reference_eval import evaluate_reference
    from ilc_reference.checkpoint import load_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    plan = json.loads((out / "plan.json").read_text())
    calib = _calib(out)
    models = {}
    for q in plan["qualities"]:
        models[f"init_q{q}"] = GPU_WEIGHTS / f"ilc-q{q}.safetensors"  # "before": the current ILC
    for run in plan["arms"]:
        models[run] = out / run / "model.safetensors"
    (out / "eval").mkdir(exist_ok=True)
    kodak = sorted(KODAK.glob("*.png"))[: args.limit] if args.limit else sorted(KODAK.glob("*.png"))
    for name, src in models.items():
        if args.only and name not in args.only:
            continue
        if not src.exists():
            print(f"skip {name}: {src} missing")
            continue
        cache = ResultCache(out / "eval" / f"{name}.cache.jsonl")  # per run: evals may run in parallel
        fin = out / "final" / f"{name}.safetensors"
        mid = _finalize(src, fin, calib)
        row = {"checkpoint": str(fin), "model_id": mid}
        for split, folder in (("kodak", KODAK), ("heldout", out / "data" / "heldout")):
            r = evaluate_codec(folder, models=[fin], backend="torch", limit=args.limit, name=name, cache=cache,
                               threads=args.threads)
            row[split] = {k: v[0] for k, v in r["results"].items()}
            print(f"{name} {split}: {row[split]['bpp']:.4f} bpp {row[split]['psnr-rgb']:.3f} dB", flush=True)
        ref = evaluate_reference(load_model(fin), kodak[: args.ceiling_images])
        row["ceiling_psnr_kodak"] = ref["z_zero_ceiling_psnr"]
        row["est_bpp_kodak"], row["est_psnr_kodak"] = ref["bpp"], ref["psnr"]
        print(f"{name} ceiling (y unquantised, z_hat = g(y) or 0): {row['ceiling_psnr_kodak']:.3f} dB", flush=True)
        log = out / name / "log.jsonl"
        if log.exists():
            lines = log.read_text().splitlines()
            row["steps"] = len(lines)
            row["wall_s"] = json.loads(lines[-1])["wall"]
        (out / "eval" / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")


# --- report -------------------------------------------------------------------------------

def _slope_at(curve: dict, i: int) -> float:
    r, d = np.log(curve["bpp"]), np.asarray(curve["psnr-rgb"])
    segs = [(d[j + 1] - d[j]) / (r[j + 1] - r[j]) for j in (i - 1, i) if 0 <= j < len(d) - 1]
    return float(np.mean(segs))


def local_bd_rate(a: dict, b: dict, slope: float) -> float:
    """% rate change of point b vs point a at equal PSNR, moving along a curve of slope dPSNR/dln(bpp)."""
    return 100 * (math.exp(math.log(b["bpp"] / a["bpp"]) - (b["psnr-rgb"] - a["psnr-rgb"]) / slope) - 1)


def point_vs_curve(p: dict, curve: dict) -> float:
    """% rate of point p vs the curve's rate at p's PSNR (ln-rate linear in PSNR; end segments extended)."""
    d, r = np.asarray(curve["psnr-rgb"]), np.log(curve["bpp"])
    o = np.argsort(d)
    d, r = d[o], r[o]
    x = p["psnr-rgb"]
    j = int(np.clip(np.searchsorted(d, x) - 1, 0, len(d) - 2))
    r_at = r[j] + (r[j + 1] - r[j]) * (x - d[j]) / (d[j + 1] - d[j])
    return 100 * (p["bpp"] / math.exp(r_at) - 1)


def report(args) -> None:
    out = Path(args.out)
    plan = json.loads((out / "plan.json").read_text())
    ev = {p.stem: json.loads(p.read_text()) for p in sorted((out / "eval").glob("*.json"))}
    curves = dict(GPU_CURVES)
    for cand in sorted((ROOT / "docs" / "results").glob("*jpeg*.json")):
        try:
            c = json.loads(cand.read_text())["results"]
            curves["jpeg"] = {"bpp": c["bpp"], "psnr-rgb": c["psnr-rgb"]}
            curves["jpeg_src"] = str(cand.relative_to(ROOT))
            break
        except (KeyError, ValueError):
            continue
    s = _slope_at(GPU_CURVES["ilc_gpu"], 1)
    rows = []
    for q in plan["qualities"]:
        ref = ev.get(f"init_q{q}")
        for name in [f"init_q{q}", *[r for r in plan["arms"] if plan["arms"][r]["q"] == q]]:
            e = ev.get(name)
            if e is None:
                continue
            row = {"name": name, "desc": plan["arms"].get(name, {}).get("desc", "GPU ilc-q2 as shipped this session (before)"),
                   "steps": e.get("steps", 0), "wall_s": e.get("wall_s", 0), "ceiling": e["ceiling_psnr_kodak"]}
            for split in ("kodak", "heldout"):
                row[split] = {"bpp": e[split]["bpp"], "psnr": e[split]["psnr-rgb"]}
            k = e["kodak"]
            row["vs_ilc_curve"] = point_vs_curve(k, curves["ilc_gpu"])
            row["vs_baseline_curve"] = point_vs_curve(k, curves["baseline_gpu"])
            if "jpeg" in curves:
                row["vs_jpeg"] = point_vs_curve(k, curves["jpeg"])
            for other in ("init_q%d" % q, f"A_q{q}"):
                if other in ev and other != name:
                    for split in ("kodak", "heldout"):
                        o = ev[other][split]
                        row[f"vs_{other}_{split}"] = {
                            "dpsnr": e[split]["psnr-rgb"] - o["psnr-rgb"],
                            "dbpp_pct": 100 * (e[split]["bpp"] / o["bpp"] - 1),
                            "local_bd_rate": local_bd_rate(o, e[split], s),
                        }
            rows.append(row)
        del ref
    # arms with >= 2 qualities: true Bjontegaard BD-rate on Kodak (ilc_export.verify.rd.bd_rate)
    from ilc_export.verify.rd import bd_rate

    def curve(names):
        pts = sorted((ev[n]["kodak"]["bpp"], ev[n]["kodak"]["psnr-rgb"]) for n in names if n in ev)
        return {"results": {"bpp": [p[0] for p in pts], "psnr-rgb": [p[1] for p in pts]}} if len(pts) >= 2 else None

    bd = {}
    arm_curves = {a: curve([f"{a}_q{q}" for q in plan["qualities"]]) for a in {v["arm"] for v in plan["arms"].values()}}
    arm_curves["init"] = curve([f"init_q{q}" for q in plan["qualities"]])
    for a, c in arm_curves.items():
        if c is None:
            continue
        bd[a] = {k: bd_rate({"results": v}, c) for k, v in curves.items() if isinstance(v, dict)}
        for b in ("A", "init"):
            if b != a and arm_curves.get(b):
                bd[a][f"vs_{b}"] = bd_rate(arm_curves[b], c)
    rep = {"slope_db_per_ln_bpp": s, "curves": curves, "rows": rows, "bd_rate_kodak": bd, "plan": plan}
    (out / "ab.json").write_text(json.dumps(rep, indent=2) + "\n")
    lines = ["| run | steps | Kodak bpp / PSNR | held-out bpp / PSNR | local BD-rate vs A (Kodak / held-out) "
             "| vs init (Kodak) | vs GPU ILC curve | vs GPU baseline curve | vs Pillow JPEG | ceiling (dB) |", "|" + "---|" * 10]
    for r in rows:
        va = [r.get(f"vs_A_q{q}_{sp}") for q in plan["qualities"] for sp in ("kodak", "heldout")]
        va = " / ".join(f"{v['local_bd_rate']:+.1f} %" for v in va if v) or "-"
        vi = next((r[k] for k in r if k.startswith("vs_init") and k.endswith("kodak")), None)
        vi = f"{vi['dpsnr']:+.3f} dB, {vi['dbpp_pct']:+.1f} % bpp, {vi['local_bd_rate']:+.1f} %" if vi else "-"
        lines.append(f"| {r['name']} | {r['steps']} | {r['kodak']['bpp']:.4f} / {r['kodak']['psnr']:.3f} | "
                     f"{r['heldout']['bpp']:.4f} / {r['heldout']['psnr']:.3f} | {va} | {vi} | {r['vs_ilc_curve']:+.1f} % | "
                     f"{r['vs_baseline_curve']:+.1f} % | {r.get('vs_jpeg', float('nan')):+.1f} % | {r['ceiling']:.3f} |")
    for a, v in bd.items():
        lines.append(f"\nBD-rate (Kodak, PSNR) of {a}: " + ", ".join(f"{k} {x:+.1f} %" for k, x in v.items()))
    (out / "ab.md").write_text("\n".join(lines) + f"\n\nslope of the GPU ILC curve at q2: {s:.3f} dB per ln(bpp)\n")
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["prepare", "train", "eval", "report", "all"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--arms", nargs="+", default=["A", "B"], choices=sorted(ARMS))
    ap.add_argument("--qualities", type=int, nargs="+", default=[2])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crop", type=int, nargs="+", default=[192, 256])
    ap.add_argument("--pixels", type=int, default=131072)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=None, help="eval: only the first N images of each set")
    ap.add_argument("--ceiling-images", type=int, default=24, help="eval: Kodak images for the estimated pass / ceiling")
    ap.add_argument("--only", nargs="+", default=None, help="eval: only these runs (e.g. init_q2 A_q2)")
    args = ap.parse_args(argv)
    phases = ["prepare", "train", "eval", "report"] if args.phase == "all" else [args.phase]
    for ph in phases:
        {"prepare": prepare, "train": train, "eval": evaluate, "report": report}[ph](args)


if __name__ == "__main__":
    main()
