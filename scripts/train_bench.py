"""Training throughput per model per speed-up flag set: pixels/s, one line each.

    python scripts/train_bench.py [--models ilc-q2 baseline-q2] [--sets base bf16 ...] [--json out.jsonl]

Meant for the first minutes of a GPU window (one call measures every flag set, so the defaults
can be changed on evidence). Models are shipped checkpoint names (their configs; weights are
not needed for speed) or "tiny"/"tiny-baseline". Data: --data folders, else random images.
Each set builds a fresh trainer in a scratch folder, runs --warmup steps (compilation, cuDNN
autotuning) and times --steps more with the device synchronised at both ends.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "reference"), str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ilc_reference.train import Trainer, build_parser  # noqa: E402

SETS = {
    "base": [],
    "channels_last": ["--channels-last"],
    "bf16": ["--amp", "bf16"],
    "fp16": ["--amp", "fp16"],
    "fused_adam": ["--fused-adam"],
    "prefetch": ["--prefetch", "4"],
    "compile": ["--compile"],
    "bf16+cl+fused+prefetch": ["--amp", "bf16", "--channels-last", "--fused-adam", "--prefetch", "4"],
    "all+compile": ["--amp", "bf16", "--channels-last", "--fused-adam", "--prefetch", "4", "--compile"],
}


def model_config(name: str, scratch: Path) -> tuple[str, str]:
    """(kind, config json path) for a shipped checkpoint name or tiny/tiny-baseline."""
    from ilc_reference.config import tiny_config

    if name.startswith("tiny"):
        cfg = json.loads(tiny_config("baseline" if name == "tiny-baseline" else "ilc").to_json())
    else:
        cfg = json.loads((ROOT / "reference/ilc_reference/checkpoints" / f"{name}.json").read_text())["config"]
    kind = cfg.pop("kind")
    cfg.pop("name", None)
    p = scratch / f"{name}.json"
    p.write_text(json.dumps(cfg))
    return kind, str(p)


def random_images(d: Path, n: int, side: int) -> str:
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side + 64, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return str(d)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_one(argv: list[str], warmup: int, steps: int) -> dict:
    tr = Trainer(build_parser().parse_args(argv))
    try:
        for _ in range(warmup):
            tr.step()
        sync(tr.device)
        px, t = 0, time.perf_counter()
        for _ in range(steps):
            tr.step()
            px += tr.last_pixels
        sync(tr.device)
        dt = time.perf_counter() - t
        mem = torch.cuda.max_memory_allocated(tr.device) / 2**30 if tr.cuda else 0.0
        return {"pixels_per_s": px / dt, "s_per_step": dt / steps, "max_mem_gib": round(mem, 2), "notes": tr.notes}
    finally:
        tr.batches.close()
        tr.log.close()
        if tr.cuda:
            torch.cuda.reset_peak_memory_stats(tr.device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ilc-q2", "baseline-q2"])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--data", nargs="+", default=None)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--pixels", type=int, default=1 << 20, help="pixels per step (the last GPU window used 1 Mpx)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--time-limit-s", type=float, default=0, help="skip what is left after this long")
    p.add_argument("--json", default=None, help="also append one JSON line per measurement here")
    a = p.parse_args(argv)
    t_start = time.time()
    if a.threads:
        torch.set_num_threads(a.threads)
    if torch.cuda.is_available():
        print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    else:
        print("device: cpu (GPU-only flags run or no-op as their notes say), torch", torch.__version__)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        data = a.data or [random_images(td / "data", 4, max(a.crop, 64) + 64)]
        for m in a.models:
            kind, cfg = model_config(m, td)
            for s in a.sets:
                if a.time_limit_s and time.time() - t_start > a.time_limit_s:
                    print(f"{m:>14} {s:>24}: skipped (time limit)")
                    continue
                out = td / f"{m}-{s}"
                argv = ["--data", *data, "--out", str(out), "--kind", kind, "--config", cfg, "--crop", str(a.crop),
                        "--pixels", str(a.pixels), "--steps", str(10**9), "--device", a.device, "--quiet", *SETS[s]]
                t = time.time()
                try:
                    r = bench_one(argv, a.warmup, a.steps)
                except Exception as e:  # one failing flag set must not cost the others
                    r = {"error": f"{type(e).__name__}: {e}"[:300]}
                r.update(model=m, set=s, wall_s=round(time.time() - t, 1), crop=a.crop, pixels=a.pixels)
                rows.append(r)
                if "error" in r:
                    print(f"{m:>14} {s:>24}: ERROR {r['error']}")
                else:
                    print(f"{m:>14} {s:>24}: {r['pixels_per_s'] / 1e6:8.3f} Mpx/s  {r['s_per_step'] * 1e3:8.1f} ms/step"
                          f"  {r['max_mem_gib']:.1f} GiB  ({r['wall_s']} s)" + (f"  [{'; '.join(r['notes'])}]" if r["notes"] else ""))
                if a.json:
                    with open(a.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
    base = {r["model"]: r["pixels_per_s"] for r in rows if r["set"] == "base" and "pixels_per_s" in r}
    for r in rows:
        if r["model"] in base and "pixels_per_s" in r and r["set"] != "base":
            print(f"{r['model']:>14} {r['set']:>24}: x{r['pixels_per_s'] / base[r['model']]:.2f} vs base")


if __name__ == "__main__":
    main()
