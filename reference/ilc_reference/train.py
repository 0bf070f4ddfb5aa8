"""Train an ILC or baseline model on a folder of images.

    python -m ilc_reference.train --data DIR [DIR ...] --out runs/ilc_q2 --lmbda 0.0067 --steps 20000

Runs on CPU or CUDA unchanged. Every --ckpt-every steps it writes a training state
(model, optimizer, RNG states, step) atomically; rerunning the same command resumes
exactly where it stopped. A JSONL log records loss/bpp/PSNR per step.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import save_checkpoint
from .config import ModelConfig
from .model import build_model

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def load_images(dirs: list[str], crop: int) -> list[np.ndarray]:
    """Load every image under dirs as uint8 HWC (images smaller than crop are skipped)."""
    files = sorted(p for d in dirs for p in Path(d).rglob("*") if p.suffix.lower() in IMAGE_EXT)
    if not files:
        raise SystemExit(f"no images found under {dirs}")
    imgs = []
    for p in files:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        if min(a.shape[:2]) >= crop:
            imgs.append(a)
    return imgs


def batch_geometry(rng: np.random.Generator, crops: list[int], batch: int, pixels: int | None) -> tuple[int, int]:
    """(batch, crop) for one step. Several crop sizes stop the convs with zero padding from
    learning position-specific behaviour tied to one latent geometry (which does not
    generalise to full-size images); the batch keeps the pixels per step roughly constant."""
    crop = int(crops[rng.integers(len(crops))]) if len(crops) > 1 else int(crops[0])
    if pixels:
        batch = max(1, round(pixels / crop**2))
    return batch, crop


def sample_batch(imgs, rng: np.random.Generator, batch: int, crop: int) -> torch.Tensor:
    out = np.empty((batch, crop, crop, 3), dtype=np.uint8)
    for i in range(batch):
        a = imgs[rng.integers(len(imgs))]
        y = rng.integers(a.shape[0] - crop + 1)
        x = rng.integers(a.shape[1] - crop + 1)
        c = a[y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c[::-1]
        out[i] = c
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def _atomic_torch_save(obj, path: Path):
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(args) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)

    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        cfg = ModelConfig.from_dict(state["config"])
        print(f"resuming {out} at step {state['step']}")
    else:
        state = None
        base = json.loads(Path(args.config).read_text()) if args.config else {}
        cfg = ModelConfig.from_dict({**base, "kind": args.kind, "name": args.name or out.name})
        if args.lmbda is not None:
            cfg.lmbda = args.lmbda
    torch.manual_seed(args.seed)  # initial weights depend only on the seed
    model = build_model(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        step = state["step"]
    else:
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        if args.init:
            from safetensors.torch import load_file

            sd = {k: v for k, v in load_file(args.init).items() if not k.startswith("tables.")}
            model.load_state_dict(sd)
            print(f"initialised from {args.init}")
    for g in opt.param_groups:
        g["lr"] = args.lr

    imgs = load_images(args.data, max(args.crop))
    log = open(out / "log.jsonl", "a")
    model.train()
    t0 = time.time()
    wall_before = state["wall"] if state else 0.0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    stop_at = time.time() + args.max_minutes * 60 if args.max_minutes else None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), disable=args.quiet) as prog:
        task = prog.add_task(out.name, total=args.steps, completed=step, stats="")
        while step < args.steps:
            bsz, crop = batch_geometry(rng, args.crop, args.batch, args.pixels)
            x = sample_batch(imgs, rng, bsz, crop).to(device)
            res = model(x)
            loss, stats = model.loss(x, res)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            stats["step"] = step
            stats["wall"] = round(wall_before + time.time() - t0, 2)
            log.write(json.dumps(stats) + "\n")
            prog.update(task, completed=step, stats=f"bpp {stats['bpp']:.3f} psnr {stats['psnr']:.2f}")
            last = step == args.steps or (stop_at is not None and time.time() > stop_at)
            if step % args.ckpt_every == 0 or last:
                log.flush()
                _atomic_torch_save({
                    "model": model.state_dict(), "opt": opt.state_dict(), "np_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(), "step": step,
                    "config": json.loads(cfg.to_json()), "wall": wall_before + time.time() - t0,
                }, state_path)
                save_checkpoint(model.cpu(), out / "model", info={
                    "steps": step, "wall_s": round(wall_before + time.time() - t0), "lmbda": cfg.lmbda,
                    "data": [str(d) for d in args.data], "crop": args.crop, "batch": args.batch, "pixels": args.pixels, "device": str(device),
                })
                model.to(device)
            if stop_at is not None and time.time() > stop_at:
                break
    log.close()
    return out / "model.safetensors"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="image folders (searched recursively)")
    p.add_argument("--out", required=True, help="run folder (state.pt, model.safetensors, log.jsonl)")
    p.add_argument("--kind", default="ilc", choices=["ilc", "baseline"])
    p.add_argument("--name", default=None)
    p.add_argument("--config", default=None, help="JSON with ModelConfig fields")
    p.add_argument("--lmbda", type=float, default=None)
    p.add_argument("--init", default=None, help="start from these weights (e.g. another quality)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, nargs="+", default=[192, 256, 320],
                   help="crop size(s); one is picked at random per step (multiples of 64)")
    p.add_argument("--pixels", type=int, default=128 * 128 * 8,
                   help="pixels per step: batch = round(pixels / crop^2); 0 = use --batch")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
