"""Train several models at once on one device until a wall-clock deadline.

    ilc-train-multi --plan plan.json --out-root runs --deadline-s 540 [--set device=cuda amp=bf16]

plan.json: {"defaults": {trainer flag: value, ...}, "runs": [{"name": "ilc_q2", flag: value, ...}]}
Flags are ilc-train's (underscores or dashes), e.g. data, kind, config (a path or an inline
ModelConfig dict), lmbda, init, steps, lr, crop, pixels, ckpt_every, ckpt_every_s. Each run
lives in <out-root>/<name>; a run folder that holds a state resumes from it (exactly).

Modes:
  inproc (default): one process steps the models in turn (--share steps: equal steps;
      --share time: equal wall time). Each model keeps its own RNG streams, so neither the
      interleaving nor a resume changes any model's trajectory.
  procs: one ilc-train process per model (the GPU time-slices them; more CPU for launching
      kernels), all with the same absolute deadline.
Both save every ckpt_every steps / ckpt_every_s seconds and on SIGTERM/SIGINT, and stop early
enough to have saved every model before the deadline. A summary goes to <out-root>/multi.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from .train import StopFlag, Trainer, argv_from_dict, build_parser


def _value(s: str):
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return s


def load_plan(path: str | Path, out_root: str | Path, overrides: dict | None = None,
              only: list[str] | None = None) -> list[dict]:
    """Each run of a plan as a flat {flag: value} dict with its out folder set."""
    plan = json.loads(Path(path).read_text())
    runs = []
    names = set()
    for r in plan["runs"]:
        d = {**plan.get("defaults", {}), **r, **(overrides or {})}
        d = {k.replace("-", "_"): v for k, v in d.items()}
        name = d.pop("name")
        if name in names:
            raise ValueError(f"run name {name!r} appears twice in {path}")
        names.add(name)
        if only and name not in only:
            continue
        out = Path(out_root) / name
        if isinstance(d.get("config"), dict):
            out.mkdir(parents=True, exist_ok=True)
            cfg_path = out / "plan-config.json"
            cfg_path.write_text(json.dumps(d["config"], indent=1, sort_keys=True) + "\n")
            d["config"] = str(cfg_path)
        d["out"] = str(out)
        d.setdefault("name", name)
        runs.append(d)
    if not runs:
        raise SystemExit(f"no runs selected from {path}")
    return runs


def _summary(rows: list[dict], out_root: Path, extra: dict) -> dict:
    s = {**extra, "runs": rows}
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "multi.json").write_text(json.dumps(s, indent=1) + "\n")
    for r in rows:
        print(f"{r['name']:>16}: step {r['start_step']} -> {r['step']}  ({r['steps_here']} here, "
              f"{r['pixels_per_s']:.0f} px/s while stepping)")
    return s


def run_inproc(runs: list[dict], deadline: float | None, share: str = "steps", status_every_s: float = 30,
               threads: int = 0) -> list[dict]:
    if threads:
        torch.set_num_threads(threads)
    images: dict = {}
    trainers = []
    for d in runs:
        t = Trainer(build_parser().parse_args(argv_from_dict(d)), images)
        for n in t.notes:
            print(f"[{t.out.name}] {n}", flush=True)
        trainers.append(t)
    print(f"{len(trainers)} models ready"
          + (f", {deadline - time.time():.0f} s to the deadline" if deadline else ""), flush=True)
    for t in trainers:
        t.set_lr_window(time.time(), deadline)
    start = {id(t): t.step_no for t in trainers}
    busy = {id(t): 0.0 for t in trainers}
    pixels = {id(t): 0 for t in trainers}
    last_status = time.time()
    stop = StopFlag()
    try:
        while not stop.set:
            active = [t for t in trainers if not t.done]
            if not active:
                break
            key = (lambda t: (t.step_no, trainers.index(t))) if share == "steps" else (lambda t: busy[id(t)])
            tr = min(active, key=key)
            if deadline is not None:
                # the next step, then a final save of every model with unsaved steps
                final = sum(1.5 * t.save_ewma + 0.2 for t in trainers if t.step_no != t.saved_step or t is tr)
                if time.time() + 1.5 * (tr.step_ewma or 0.0) + final + 0.5 > deadline:
                    break
            t0 = time.time()
            tr.step()
            busy[id(tr)] += time.time() - t0
            pixels[id(tr)] += tr.last_pixels
            if tr.want_checkpoint():
                tr.save()
            if status_every_s and time.time() - last_status > status_every_s:
                last_status = time.time()
                print(" | ".join(f"{t.out.name} {t.step_no} bpp {t.last_stats.get('bpp', 0):.3f} "
                                 f"psnr {t.last_stats.get('psnr', 0):.2f}" for t in trainers), flush=True)
    finally:
        for t in trainers:
            t.close()
        stop.restore()
    return [{"name": t.out.name, "out": str(t.out), "start_step": start[id(t)], "step": t.step_no,
             "steps_here": t.step_no - start[id(t)], "busy_s": round(busy[id(t)], 2),
             "pixels_per_s": pixels[id(t)] / busy[id(t)] if busy[id(t)] else 0.0} for t in trainers]


def run_procs(runs: list[dict], deadline: float | None, threads: int = 0) -> list[dict]:
    from .trainstate import read_index

    procs = []
    starts = []
    for d in runs:
        out = Path(d["out"])
        idx = read_index(out)
        starts.append(idx["step"] if idx else 0)
        argv = argv_from_dict({**d, "quiet": True, "deadline_at": deadline, "threads": threads or d.get("threads")})
        out.mkdir(parents=True, exist_ok=True)
        log = open(out / "train.stdout", "a")
        procs.append((subprocess.Popen([sys.executable, "-m", "ilc_reference.train", *argv], stdout=log,
                                       stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}), log))
    t0 = time.time()

    def forward(signum, frame):
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p, log in procs:
            p.wait()
            log.close()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    rows = []
    for d, s0, (p, _) in zip(runs, starts, procs):
        idx = read_index(d["out"])
        step = idx["step"] if idx else 0
        a = build_parser().parse_args(argv_from_dict(d))
        px = (a.pixels or a.batch * max(a.crop) ** 2) * (step - s0)
        rows.append({"name": Path(d["out"]).name, "out": d["out"], "start_step": s0, "step": step,
                     "steps_here": step - s0, "busy_s": round(time.time() - t0, 2), "returncode": p.returncode,
                     "pixels_per_s": px / max(time.time() - t0, 1e-9)})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", required=True)
    p.add_argument("--out-root", default="runs", help="run folders go here, one per plan entry")
    p.add_argument("--deadline-s", type=float, default=None, help="seconds from now by which every model has saved")
    p.add_argument("--deadline-at", type=float, default=None, help="the same as an absolute epoch time")
    p.add_argument("--mode", default="inproc", choices=["inproc", "procs"])
    p.add_argument("--share", default="steps", choices=["steps", "time"], help="inproc: what each model gets equally")
    p.add_argument("--set", nargs="*", default=[], metavar="FLAG=VALUE", help="override a trainer flag for every run")
    p.add_argument("--only", nargs="*", default=None, help="train only these runs of the plan")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--status-every-s", type=float, default=30)
    a = p.parse_args(argv)
    start = time.time()
    ends = [x for x in (a.deadline_at, start + a.deadline_s if a.deadline_s else None) if x]
    deadline = min(ends) if ends else None
    overrides = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        overrides[k.replace("-", "_")] = _value(v)
    runs = load_plan(a.plan, a.out_root, overrides, a.only)
    if a.mode == "inproc":
        rows = run_inproc(runs, deadline, a.share, a.status_every_s, a.threads)
    else:
        rows = run_procs(runs, deadline, a.threads)
    _summary(rows, Path(a.out_root), {"mode": a.mode, "share": a.share, "wall_s": round(time.time() - start, 2),
                                      "deadline_s": None if deadline is None else round(deadline - start, 2),
                                      "device": "cuda" if torch.cuda.is_available() else "cpu"})


if __name__ == "__main__":
    main()
