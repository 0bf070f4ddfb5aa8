"""Train an ILC or baseline model on a folder of images.

    python -m ilc_reference.train --data DIR [DIR ...] --out runs/ilc_q2 --lmbda 0.0067 --steps 20000

Runs on CPU or CUDA unchanged. Every --ckpt-every steps (and every --ckpt-every-s seconds) it
writes a training state (model, Adam moments, RNG states, step, wall) atomically as state.json
plus parts of at most --state-part-mib; rerunning the same command resumes exactly where it
stopped (a legacy state.pt resumes too). SIGTERM/SIGINT save and stop; --deadline-s stops with
a checkpoint before a wall-clock limit. A JSONL log records loss/bpp/PSNR per step.

GPU speed-ups, all off by default: --amp, --channels-last, --fused-adam, --compile,
--prefetch (see ilc_reference.speedups for what runs in low precision).
"""
from __future__ import annotations

import argparse
import json
import math
import queue
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ilc_export.contract.files import write_atomic
from ilc_export.contract.model_id import TABLE_PREFIX

from .checkpoint import save_checkpoint
from .config import ModelConfig
from .model import build_model
from .trainstate import load_state, save_state

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}
MIB = 1 << 20


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
    if not imgs:
        raise SystemExit(f"no image under {dirs} is at least {crop} px on its short side")
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


class BatchSource:
    """Training crops drawn from one run's numpy RNG, optionally prepared ahead in a thread.

    The RNG state saved with a checkpoint is the one right after the last batch the trainer
    consumed (not the producer's, which runs ahead), so prefetching changes no batch and a
    resume stays exact.
    """

    def __init__(self, imgs, rng: np.random.Generator, args, prefetch: int = 0, pin: bool = False):
        self.imgs, self.rng, self.args, self.pin = imgs, rng, args, pin
        self.consumed_state = rng.bit_generator.state
        self.q: queue.Queue | None = None
        if prefetch > 0:
            self.q = queue.Queue(maxsize=prefetch)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._produce, daemon=True)
            self.thread.start()

    def _make(self):
        bsz, crop = batch_geometry(self.rng, self.args.crop, self.args.batch, self.args.pixels)
        x = sample_batch(self.imgs, self.rng, bsz, crop)
        if self.pin:
            x = x.pin_memory()
        return x, self.rng.bit_generator.state

    def _produce(self):
        while not self.stop.is_set():
            item = self._make()
            while not self.stop.is_set():
                try:
                    self.q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass

    def next(self) -> torch.Tensor:
        x, self.consumed_state = self.q.get() if self.q is not None else self._make()
        return x

    def close(self):
        if self.q is not None:
            self.stop.set()
            self.thread.join()
            self.q = None


class Trainer:
    """One model's training: model, optimizer, its own RNG streams, batches, checkpoints.

    Each trainer swaps its own torch (and CUDA) RNG state in around its forward pass, so the
    noise a model draws depends only on its own history: several trainers can share one
    process in any interleaving and each still resumes exactly.
    """

    def __init__(self, args, images: dict | None = None):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.notes: list[str] = []
        state = load_state(self.out)
        if state is not None:
            cfg = ModelConfig.from_dict(state["config"])
            self.notes.append(f"resuming {self.out} at step {state['step']}"
                              + ("" if state.get("_exact", True) else " (approximate: compacted Adam moments)"))
        else:
            base = json.loads(Path(args.config).read_text()) if args.config else {}
            if isinstance(base.get("config"), dict):  # a checkpoint's .json sidecar
                base = base["config"]
            cfg = ModelConfig.from_dict({**base, "kind": args.kind, "name": args.name or self.out.name})
            if args.lmbda is not None:
                cfg.lmbda = args.lmbda
            if args.post_hidden is not None:
                cfg.post_hidden = args.post_hidden
        self.cfg = cfg
        torch.manual_seed(args.seed)  # initial weights depend only on the seed
        self.model = build_model(cfg).to(self.device)
        if args.channels_last:
            from .speedups import to_channels_last

            to_channels_last(self.model)
        self.opt = self._make_optimizer()
        self.rng = np.random.default_rng(args.seed)
        self.step_no = 0
        self.wall_before = 0.0
        if state is not None:
            self.model.load_state_dict(state["model"])
            if "opt" in state:
                try:
                    self.opt.load_state_dict(state["opt"])
                except ValueError as e:  # other parameter groups than the state's
                    raise SystemExit(f"{self.out}: the saved optimiser state has other lr groups than "
                                     f"--lr-mult {' '.join(args.lr_mult) or '(none)'} makes ({e})") from None
            self.rng.bit_generator.state = state["np_rng"]
            self.torch_rng = state["torch_rng"]
            random.setstate(state["py_rng"])
            self.step_no = state["step"]
            self.wall_before = state["wall"]
            cuda_rng = state.get("cuda_rng") if self.cuda else None
        else:
            torch.manual_seed(args.seed)
            random.seed(args.seed)
            self.torch_rng = torch.get_rng_state()
            cuda_rng = None
            if args.init:
                from safetensors.torch import load_file

                sd = {k: v for k, v in load_file(args.init).items() if not k.startswith(TABLE_PREFIX)}
                if args.init_partial:  # modules the init lacks keep their fresh init (e.g. a zero-initialised g)
                    missing, unexpected = self.model.load_state_dict(sd, strict=False)
                    if unexpected:
                        raise SystemExit(f"--init {args.init} has weights this model does not: {sorted(unexpected)[:4]}")
                    if missing:
                        mods = sorted({k.split('.')[0] for k in missing})
                        self.notes.append(f"fresh (not in the init): {len(missing)} tensors of {', '.join(mods)}")
                else:
                    self.model.load_state_dict(sd)
                self.notes.append(f"initialised from {args.init}")
        if self.cuda:
            if cuda_rng is None:  # fresh, or a state from a CPU run: a CUDA stream seeded like the CPU one
                g = torch.Generator(device=self.device)
                g.manual_seed(args.seed)
                cuda_rng = g.get_state()
            self.cuda_rng = cuda_rng
        mults = lr_mults(args.lr_mult)
        for g in self.opt.param_groups:
            if g.get("name") in mults:  # the flag, not a resumed state's, sets the multiple
                g["lr_mult"] = mults[g["name"]]
        self._set_lr(args.lr)
        self.scaler = None
        if args.amp != "off":
            from .speedups import apply_amp

            if args.amp == "fp16":
                self.scaler = torch.amp.GradScaler(self.device.type)
                if state is not None and state.get("scaler"):
                    self.scaler.load_state_dict(state["scaler"])
            n = apply_amp(self.model, args.amp, self.device)
            if self.device.type == "cpu":
                self.notes.append(f"--amp {args.amp} on CPU: runs, but is meant for GPUs (usually slower here)")
            self.notes.append(f"amp {args.amp}: {n} conv stacks in low precision")
        if args.compile:
            from .speedups import compile_model

            self.notes.append(f"torch.compile: {compile_model(self.model, args.compile_mode, args.compile_backend)} modules")
        key = (tuple(args.data), max(args.crop))
        if images is not None and key in images:
            imgs = images[key]
        else:
            imgs = load_images(args.data, max(args.crop))
            if images is not None:
                images[key] = imgs
        pin = self.cuda and args.prefetch > 0
        self.batches = BatchSource(imgs, self.rng, args, prefetch=args.prefetch, pin=pin)
        if state is not None:
            trim_log(self.out / "log.jsonl", self.step_no)
        self.log = open(self.out / "log.jsonl", "a")
        self.model.train()
        self.t0 = time.time()
        self.last_save_t = self.t0
        self.saved_step = self.step_no
        self.step_ewma = None
        # until a save is timed: a state is ~3x the weights, written (and hashed) at >= ~100 MB/s
        self.save_ewma = 0.2 + 3 * sum(p.numel() * p.element_size() for p in self.model.parameters()) / 100e6
        self.last_stats: dict = {}
        self.last_pixels = 0
        self.lr_window: tuple[float, float] | None = None

    def set_lr_window(self, t_start: float, t_end: float | None):
        """With --lr-end: decay the lr from --lr to --lr-end (cosine) between these wall times.

        Time, not steps, because a borrowed GPU is a deadline: the decay must end when it does."""
        if self.args.lr_end is not None and t_end is not None and t_end > t_start:
            self.lr_window = (t_start, t_end)

    def current_lr(self, now: float) -> float:
        a = self.args
        if self.lr_window is None:
            return a.lr
        t0, t1 = self.lr_window
        frac = min(max((now - t0) / (t1 - t0), 0.0), 1.0)
        return a.lr_end + (a.lr - a.lr_end) * 0.5 * (1 + math.cos(math.pi * frac))

    def _make_optimizer(self):
        """Adam over every weight; each module named in --lr-mult is a group of its own whose lr
        is that multiple of the rest's (e.g. a small image-domain post-filter learns faster than
        f; a g stored scaled by g_lr_scale, slower; 0 freezes a module). Modules this model lacks
        are noted, not an error: a plan's defaults serve the ILC and the baseline alike."""
        kw = {}
        if self.args.fused_adam:
            kw["fused"] = True
        mults = lr_mults(self.args.lr_mult)
        mods = dict(self.model.named_children())
        own = {n: m for n, m in mults.items() if n in mods}
        if set(mults) - set(own):
            self.notes.append(f"--lr-mult: not in this model: {', '.join(sorted(set(mults) - set(own)))}")
        frozen = sorted(n for n, f in own.items() if f == 0)
        for n in frozen:  # a multiple of 0 freezes the module: no gradients, not in the optimiser
            mods[n].requires_grad_(False)
            del own[n]
        if frozen:
            self.notes.append(f"frozen: {', '.join(frozen)}")
        params = [p for p in self.model.parameters() if p.requires_grad]
        if own:
            sep = {id(p) for n in own for p in mods[n].parameters()}
            params = [{"params": [p for p in params if id(p) not in sep]}] + [
                {"params": list(mods[n].parameters()), "name": n, "lr_mult": f} for n, f in sorted(own.items())]
            self.notes.append("lr multiples: " + ", ".join(f"{n} x{f:g}" for n, f in sorted(own.items())))
        try:
            return torch.optim.Adam(params, lr=self.args.lr, **kw)
        except (RuntimeError, ValueError) as e:  # fused not supported on this device/build
            self.notes.append(f"--fused-adam unavailable here ({e}); using the default Adam")
            return torch.optim.Adam(params, lr=self.args.lr)

    def _set_lr(self, lr: float) -> None:
        """Every group at ``lr`` times its multiple, ramped up over --warmup-steps: a fresh Adam's
        first steps move every weight by about the lr whatever its gradient, which knocks a
        trained model off its optimum (from the shipped ILC q2 at 1e-4: -6.7 dB on a fixed
        batch after one step)."""
        if self.args.warmup_steps and self.step_no < self.args.warmup_steps:
            lr *= (self.step_no + 1) / self.args.warmup_steps
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)

    @property
    def wall(self) -> float:
        return self.wall_before + time.time() - self.t0

    @property
    def done(self) -> bool:
        return self.step_no >= self.args.steps

    def _rng_in(self):
        torch.set_rng_state(self.torch_rng)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)

    def _rng_out(self):
        self.torch_rng = torch.get_rng_state()
        if self.cuda:
            self.cuda_rng = torch.cuda.get_rng_state(self.device)

    def step(self) -> dict:
        """One optimisation step; returns the logged stats."""
        t = time.time()
        self._set_lr(self.current_lr(t))
        x = self.batches.next().to(self.device, non_blocking=True)
        if self.args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self._rng_in()
        try:
            res = self.model(x)
        finally:
            self._rng_out()
        loss, stats = self.model.loss(x, res)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        self.step_no += 1
        self.last_pixels = x.shape[0] * x.shape[2] * x.shape[3]
        stats["step"] = self.step_no
        stats["wall"] = round(self.wall, 2)
        if self.lr_window is not None or self.step_no <= self.args.warmup_steps:
            stats["lr"] = self.opt.param_groups[0]["lr"]
        self.log.write(json.dumps(stats) + "\n")
        dt = time.time() - t
        self.step_ewma = dt if self.step_ewma is None else 0.8 * self.step_ewma + 0.2 * dt
        self.last_stats = stats
        return stats

    def want_checkpoint(self) -> bool:
        a = self.args
        if self.step_no == self.saved_step:
            return False
        return (self.step_no % a.ckpt_every == 0 or self.done
                or bool(a.ckpt_every_s and time.time() - self.last_save_t >= a.ckpt_every_s))

    def time_needed(self) -> float:
        """Seconds the next step plus a final checkpoint will take (a safe estimate)."""
        return 1.5 * (self.step_ewma or 0.0) + 1.5 * self.save_ewma + 0.5

    def save(self):
        t = time.time()
        self.log.flush()
        state = {
            "model": self.model.state_dict(), "opt": self.opt.state_dict(), "np_rng": self.batches.consumed_state,
            "torch_rng": self.torch_rng, "py_rng": random.getstate(), "step": self.step_no,
            "config": json.loads(self.cfg.to_json()), "wall": self.wall,
        }
        if self.cuda:
            state["cuda_rng"] = self.cuda_rng
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        save_state(self.out, state, part_bytes=int(self.args.state_part_mib * MIB), moments=self.args.state_moments)
        a = self.args
        save_checkpoint(self.model, self.out / "model", info={
            "steps": self.step_no, "wall_s": round(self.wall), "lmbda": self.cfg.lmbda,
            "data": [str(d) for d in a.data], "crop": a.crop, "batch": a.batch, "pixels": a.pixels, "device": str(self.device),
        })
        self.saved_step = self.step_no
        self.last_save_t = time.time()
        self.save_ewma = max(self.save_ewma * 0.5, self.last_save_t - t)

    def close(self):
        if self.step_no != self.saved_step:
            self.save()
        self.batches.close()
        self.log.close()


def trim_log(path: Path, step: int):
    """Drop log records after the resumed step (and a torn last line): steps a hard kill lost."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(r.get("step", 0)) <= step and line.endswith("\n"):
            keep.append(line)
    if keep != lines:
        write_atomic(path, "".join(keep).encode())


class StopFlag:
    """Set by SIGTERM/SIGINT so the loop can checkpoint and leave (installed in the main thread only)."""

    def __init__(self):
        self.set = False
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.set = True

    def restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)
        self.old = {}


def deadline_of(args, start: float) -> float | None:
    """Absolute time (epoch s) by which training must have saved and stopped."""
    ends = []
    if getattr(args, "deadline_at", None):
        ends.append(args.deadline_at)
    if getattr(args, "deadline_s", None):
        ends.append(start + args.deadline_s)
    return min(ends) if ends else None


def train(args) -> Path:
    start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    tr = Trainer(args)
    for n in tr.notes:
        print(n)
    stop = StopFlag()
    deadline = deadline_of(args, start)
    stop_at = time.time() + args.max_minutes * 60 if args.max_minutes else None
    ends = [t for t in (deadline, stop_at) if t]
    tr.set_lr_window(time.time(), min(ends) if ends else None)
    if args.lr_end is not None and tr.lr_window is None:
        print("--lr-end has no effect without --deadline-s / --max-minutes: the lr stays at --lr")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), disable=args.quiet) as prog:
            task = prog.add_task(tr.out.name, total=args.steps, completed=tr.step_no, stats="")
            while not tr.done and not stop.set:
                if deadline is not None and time.time() + tr.time_needed() > deadline:
                    break
                stats = tr.step()
                prog.update(task, completed=tr.step_no, stats=f"bpp {stats['bpp']:.3f} psnr {stats['psnr']:.2f}")
                over = stop_at is not None and time.time() > stop_at
                if tr.want_checkpoint() or over:
                    tr.save()
                if over:
                    break
    finally:
        tr.close()
        stop.restore()
    return tr.out / "model.safetensors"


def lr_mults(specs: list[str]) -> dict[str, float]:
    """``["post=10", "g=0.1"]`` -> ``{"post": 10.0, "g": 0.1}`` (--lr-mult)."""
    out = {}
    for spec in specs:
        name, _, f = spec.partition("=")
        try:
            out[name] = float(f)
        except ValueError:
            out[name] = -1.0
        if not name or not out[name] >= 0:
            raise SystemExit(f"--lr-mult {spec!r}: expected MODULE=FACTOR with a factor >= 0 (0 freezes), e.g. post=10")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="image folders (searched recursively)")
    p.add_argument("--out", required=True, help="run folder (state.json + parts, model.safetensors, log.jsonl)")
    p.add_argument("--kind", default="ilc", choices=["ilc", "baseline"])
    p.add_argument("--name", default=None)
    p.add_argument("--config", default=None, help="JSON with ModelConfig fields (or a checkpoint's .json sidecar)")
    p.add_argument("--lmbda", type=float, default=None)
    p.add_argument("--init", default=None, help="start from these weights (e.g. another quality)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, nargs="+", default=[192, 256, 320],
                   help="crop size(s); one is picked at random per step (multiples of 64)")
    p.add_argument("--pixels", type=int, default=128 * 128 * 8,
                   help="pixels per step: batch = round(pixels / crop^2); 0 = use --batch")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-end", type=float, default=None,
                   help="decay the lr (cosine) to this by the deadline / --max-minutes (needs one of them)")
    p.add_argument("--lr-mult", nargs="*", default=[], metavar="MODULE=F",
                   help="train these top-level modules at F times the lr (e.g. post=10 g=0.1; 0 freezes one)")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="ramp the lr up linearly over the first N steps (from a trained model: no jolt)")
    p.add_argument("--post-hidden", type=int, default=None,
                   help="give the model an image-domain post-filter this wide (cfg.post_hidden; from an "
                        "--init without one: with --init-partial, the filter starts as the identity)")
    p.add_argument("--init-partial", action="store_true",
                   help="--init may lack whole modules of this model (they keep their fresh init)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--ckpt-every-s", type=float, default=0, help="also checkpoint after this many seconds (0 = off)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="stop early enough to have saved within this many seconds of the start")
    p.add_argument("--deadline-at", type=float, default=None, help=argparse.SUPPRESS)  # absolute epoch, for launchers
    p.add_argument("--state-part-mib", type=float, default=0, help="split the state into files of at most this (0 = one file)")
    p.add_argument("--state-moments", default="fp32", choices=["fp32", "bf16"],
                   help="bf16 stores Adam moments compactly (resume is then approximate)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision (see speedups.py)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and batches")
    p.add_argument("--fused-adam", action="store_true", help="fused Adam kernel where supported")
    p.add_argument("--compile", action="store_true", help="torch.compile the couplings / baseline transforms")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # "eager": tests trace without codegen
    p.add_argument("--prefetch", type=int, default=0,
                   help="batches prepared ahead in a thread (pinned memory on CUDA); 0 = inline")
    p.add_argument("--quiet", action="store_true")
    return p


def argv_from_dict(d: dict) -> list[str]:
    """{flag_name: value} (plan files) -> command-line arguments of this trainer."""
    argv = []
    for k, v in d.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                argv.append(flag)
        elif v is None:
            continue
        elif isinstance(v, (list, tuple)):
            argv += [flag, *map(str, v)]
        else:
            argv += [flag, str(v)]
    return argv


def args_from_dict(d: dict) -> argparse.Namespace:
    """Parse a run described as {flag_name: value} through the CLI parser (same defaults, same checks)."""
    return build_parser().parse_args(argv_from_dict(d))


def main(argv=None):
    train(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
