"""Amortised encoder-side refinement for the ILC: a small network that does in one pass what
``ilc_reference.refine.refine_latents`` does in 60 Adam steps.

The ILC decodes f^-1(y_hat, 0); its encoder knows the z it drops. A correction network
h: (y, z) -> dy at H/16 (three 3x3 convs, last one zero-initialised) gives y' = y + dy; h is
trained for the model's own objective through the unchanged decoder (rate of round(y' - mu)
under the hyperprior of the original y's w_hat, + lambda 255^2 MSE of f^-1(y_hat', 0)), with
every other weight frozen. Only the encoder changes: the decoder, the bitstream, the tables
and every existing file stay as they are.

    python scripts/amortised_refine.py train --ckpt reference/ilc_reference/checkpoints/ilc-q2.safetensors \
        --data ../shared/data/train --out runs/amortised/q2 --minutes 40
    python scripts/amortised_refine.py eval --ckpt ... --out runs/amortised/q2 --q 2 --crops runs/refine/r1/crops \
        --records runs/refine/r1/ilc.jsonl [--keep-better --tag _kb]
    python scripts/amortised_refine.py report runs/amortised/q{1,2,3}/eval_kb.json --records runs/refine/r1
    python scripts/amortised_refine.py ship --ckpt .../ilc-q2.safetensors --out runs/amortised/q2

`ship` writes h as the checkpoint's encoder add-on (``ilc-q2.encoder.safetensors`` next to it),
which the torch backend and the ONNX export then use by default.

`train --train-g [--refine-y] [--g-hidden N] [--post-hidden N]` trains the decoder-side g
(``ilc_reference.model.grow_g``; and an image-domain post-filter, ``add_post_filter``) with h, f
and the hyperprior still frozen: a new decoder, so `ship --run DIR` writes a new model as a run
folder for scripts/ship_models.py, with h as its add-on.

`train` checkpoints h (h.pt) every 50 steps and resumes from it. `eval` codes the crops to real
files through the torch backend with h as the runner's refinement (``refine_fn``), decodes them
with the plain decoder, and compares per image with the unrefined and the 60-step refined
records of ``scripts/refine_ab.py`` for the same crops and quality.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ilc_export.contract.files import write_atomic
from ilc_reference.checkpoint import load_model
from ilc_reference.config import SCALE_MAX, SCALE_MIN
from ilc_reference.encoder_addon import LatentCorrection as Correction
from ilc_reference.encoder_addon import save_addon
from ilc_reference.entropy import gaussian_likelihood, ste_round


def objective(model, x, y_new, w_hat, valid=None, rate: str = "ste"):
    """rate (bits per pixel) + lambda 255^2 MSE through the z = 0 decoder, at round(y' - mu).

    rate "ste": the rate of the rounded residual with straight-through gradients (what the
    file costs); "noise": of y' - mu + U(-1/2, 1/2) (the model's training proxy: unbiased
    gradients of the rate; the distortion still sees the rounded residual)."""
    h, w = valid or x.shape[2:]
    mu = model.hyper_mean(w_hat)
    sigma = torch.exp(model.hyper_scale(w_hat)).clamp(SCALE_MIN, SCALE_MAX)
    r = ste_round(y_new - mu)
    x_hat = model.synthesis(r + mu, model.zeros_z(y_new))[..., :h, :w]
    rr = r if rate == "ste" else y_new - mu + torch.empty_like(y_new).uniform_(-0.5, 0.5)
    bpp = -torch.log2(gaussian_likelihood(rr, sigma)).sum() / (x.shape[0] * h * w)
    mse = torch.mean((x_hat - x[..., :h, :w]) ** 2)
    return bpp + model.cfg.lmbda * 255**2 * mse, bpp, mse


#: the hyperprior's parts (``--train-hyper``): h_a is encoder-side, the rest on both sides
HYPER = ("h_a", "h_s_mean", "h_s_scale", "prior")


def w_rate(model, w, n_px: int, rate: str = "ste"):
    """Bits per image pixel of the hyper-latent w under the factorised prior (``rate`` as in
    ``objective``)."""
    wq = ste_round(w) if rate == "ste" else w + torch.empty_like(w).uniform_(-0.5, 0.5)
    return -torch.log2(model.prior.likelihood(wq)).sum() / n_px


def _images(folder: Path, crop: int) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            img = np.asarray(Image.open(p).convert("RGB"))
            if min(img.shape[:2]) >= crop:
                out.append(img)
    return out


def _decoder_arg(a) -> dict | None:
    """How g is grown and trained with h (``--train-g``), as stored in h.pt; None: h alone."""
    if not a.train_g:
        return None
    d = {"g_hidden": a.g_hidden, "refine_y": a.refine_y}
    if a.post_hidden:
        d["post_hidden"] = a.post_hidden
    if a.train_hyper:
        d["hyper"] = True
    return d


def _with_decoder(model, decoder: dict | None, s: dict | None):
    """The model h is trained and evaluated against: the checkpoint's, or with g grown as
    ``decoder`` says (and the post-filter added), and from a train folder's state ``s`` their
    trained weights."""
    if decoder is None:
        return model
    from ilc_reference.model import add_post_filter, grow_g

    model = grow_g(model, decoder["g_hidden"], decoder["refine_y"])
    if decoder.get("post_hidden"):
        model = add_post_filter(model, decoder["post_hidden"])
    if s is not None and s.get("g") is not None:
        model.g.load_state_dict(s["g"])
    if s is not None and s.get("post") is not None:
        model.post.load_state_dict(s["post"])
    for name, sd in ((s or {}).get("hyper") or {}).items():
        getattr(model, name).load_state_dict(sd)
    return model


def train(a) -> None:
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    for flag, on in (("--post-hidden", a.post_hidden), ("--train-hyper", a.train_hyper)):
        if on and not a.train_g:
            raise SystemExit(f"{flag} trains a decoder part: it needs --train-g")
    if not 0 <= a.decay_to <= 1:
        raise SystemExit(f"--decay-to {a.decay_to}: a multiple of the lr from 0 to 1")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    state = out / "h.pt"
    s = torch.load(state, map_location=dev) if state.exists() else None
    decoder = s["decoder"] if s is not None else _decoder_arg(a)
    try:
        model = _with_decoder(load_model(a.ckpt), decoder, s).eval().to(dev)
    except ValueError as e:  # e.g. a post-filter narrower than the model's own
        raise SystemExit(f"{a.ckpt}: {e}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    y_ch, z_ch = model.cfg.latent_channels, model.cfg.z_channels
    hidden, k_in = (s["hidden"], s.get("k_in", 3)) if s is not None else (a.hidden, a.k_in)  # resumes as stored
    h = Correction(y_ch, z_ch, hidden, k_in).to(dev)
    groups = [{"params": list(h.parameters()), "lr": a.lr}]
    if decoder is not None:  # g learns with h: the decoder side of the same objective
        for p in model.g.parameters():
            p.requires_grad_(True)
        groups.append({"params": list(model.g.parameters()), "lr": a.g_lr})
        if model.cfg.has_post:
            for p in model.post.parameters():
                p.requires_grad_(True)
            groups.append({"params": list(model.post.parameters()), "lr": a.post_lr})
    hyper = decoder is not None and bool(decoder.get("hyper"))
    if hyper:  # the entropy model learns the distribution of h's y' (it was trained for y)
        hp = [p for name in HYPER for p in getattr(model, name).parameters()]
        for p in hp:
            p.requires_grad_(True)
        groups.append({"params": hp, "lr": a.hyper_lr})
    opt = torch.optim.Adam(groups)
    base_lrs = [g["lr"] for g in groups]
    step = 0
    if s is not None:
        h.load_state_dict(s["h"])
        opt.load_state_dict(s["opt"])
        step = s["step"]
        print(f"resuming at step {step}", flush=True)
    elif a.init_addon:  # warm start from an add-on of this or an earlier version of the model
        from ilc_reference.encoder_addon import load_addon

        h.load_state_dict(load_addon(a.init_addon, None, dev).state_dict())
        print(f"starting from {a.init_addon}", flush=True)
    imgs = _images(Path(a.data), a.crop)
    def save(at: int) -> None:  # resumable: h, Adam's moments and the step, written atomically
        buf = io.BytesIO()
        torch.save({"h": h.state_dict(), "opt": opt.state_dict(), "step": at, "hidden": hidden, "k_in": k_in,
                    "decoder": decoder, "g": model.g.state_dict() if decoder is not None else None,
                    "post": model.post.state_dict() if model.cfg.has_post else None,
                    "hyper": {n: getattr(model, n).state_dict() for n in HYPER} if hyper else None,
                    "decay": decay and {**decay, "done": decay["done"] + time.time() - t_start}}, buf)
        write_atomic(state, buf.getbuffer())

    decay = s.get("decay") if s is not None else None  # a resumed run goes on along its stored schedule
    if decay is None and a.decay_to < 1:
        decay = {"to": a.decay_to, "seconds": a.minutes * 60, "done": 0.0}
    rng = np.random.default_rng(a.seed + step)
    t_start = time.time()
    t_end = t_start + a.minutes * 60
    log = open(out / "log.jsonl", "a")
    while time.time() < t_end and step < a.steps:
        factor = 1.0
        if decay is not None:
            progress = (decay["done"] + time.time() - t_start) / decay["seconds"]
            if progress >= 1:
                break
            factor = lr_factor(progress, decay["to"])
        batch = []
        for _ in range(a.batch):
            img = imgs[rng.integers(len(imgs))]
            t0, l0 = rng.integers(img.shape[0] - a.crop + 1), rng.integers(img.shape[1] - a.crop + 1)
            batch.append(img[t0:t0 + a.crop, l0:l0 + a.crop])
        x = (torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0).to(dev)
        with torch.no_grad():
            y, z = model.analysis(x)
        with torch.set_grad_enabled(hyper):  # h_a learns only with the hyperprior
            w = model.h_a(y)
        n_px = x.shape[0] * x.shape[2] * x.shape[3]
        with torch.no_grad():
            w_hat = torch.round(w)
            w_bpp = w_rate(model, w, n_px)
            base, b_bpp, b_mse = objective(model, x, y, w_hat)
            base = base + w_bpp
        if hyper:  # w's bits count too: the prior and h_a learn
            w_hat = ste_round(w)
            w_bpp = w_rate(model, w, n_px, a.rate)
        loss, bpp, mse = objective(model, x, h(y, z), w_hat, rate=a.rate)
        loss = loss + w_bpp  # a constant unless the hyperprior learns
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step < a.warmup_steps:  # a fresh Adam moves every weight by about the lr at first
            factor = min(factor, (step + 1) / a.warmup_steps)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * factor
        opt.step()
        step += 1
        rec = {"step": step, "loss": loss.item(), "base": base.item(), "bpp": bpp.item(), "base_bpp": b_bpp.item(),
               "w_bpp": w_bpp.item(), "lr_factor": factor,
               "psnr": -10 * math.log10(max(mse.item(), 1e-12)), "base_psnr": -10 * math.log10(max(b_mse.item(), 1e-12))}
        log.write(json.dumps(rec) + "\n")
        if step % 10 == 0:
            log.flush()
            print(f"step {step}: loss {rec['loss']:.4f} (unrefined {rec['base']:.4f})", flush=True)
        if step % 50 == 0:
            save(step)
    save(step)
    log.close()


def lr_factor(progress: float, to: float) -> float:
    """The lr multiple at ``progress`` (0..1) of a run that decays: a half cosine from 1 to ``to``,
    so the last steps average out the noise of small CPU batches instead of adding to it."""
    return to + (1 - to) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _tabled_model(a, s: dict) -> Path:
    """The model of train state ``s`` with its codec tables built as scripts/ship_models.py
    builds them (same calibration), written as <out>/eval_model.safetensors."""
    import tempfile

    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_reference.checkpoint import save_checkpoint
    from ship_models import CALIB_COUNT, CALIB_DIR, calib_folder

    calib = Path(a.calib) if a.calib else CALIB_DIR
    dst = Path(a.out) / "eval_model.safetensors"
    save_checkpoint(_with_decoder(load_model(a.ckpt), s["decoder"], s), dst)
    with tempfile.TemporaryDirectory() as tmp:
        finalize_checkpoint(dst, calib_folder(calib, CALIB_COUNT, Path(tmp) / calib.name))
    return dst


def evaluate(a) -> None:
    from ilc_export.pipeline.api import open_codec
    from ilc_export.pipeline.image_io import load_rgb
    from ilc_export.pipeline.metrics import psnr

    torch.set_num_threads(a.threads)
    s = torch.load(Path(a.out) / "h.pt", map_location="cpu")
    if (s.get("decoder") or {}).get("hyper"):  # a new entropy model: new tables, so a real checkpoint
        codec = open_codec(_tabled_model(a, s), backend="torch", encoder_addon=False)
    else:
        codec = open_codec(a.ckpt, backend="torch", encoder_addon=False)  # h comes in through refine_fn only
        if s.get("decoder") is not None:  # h was trained with g: decode with that g (the same tables)
            codec.runner.model = _with_decoder(codec.runner.model, s["decoder"], s).eval()
    model = codec.runner.model
    h = _h_of(s, model.cfg).eval()

    def refine_fn(m, x, y, w_hat, valid=None):  # the runner's REFINE hook
        """h's y, unless the model's own objective says the unrefined y is better for this
        tile (one more decoder pass; the encoder never does worse than without h by it)."""
        with torch.no_grad():
            y0, z = m.analysis(x)
            y1 = h(y0, z)
            if a.keep_better and objective(m, x, y1, w_hat, valid)[0] >= objective(m, x, y, w_hat, valid)[0]:
                kept.append(0)
                return y
            kept.append(1)
            return y1

    kept: list[int] = []

    codec.runner.refine_fn = refine_fn
    records = {}
    if a.records:
        for r in map(json.loads, Path(a.records).read_text().splitlines()):
            if r["q"] == a.q:
                records[(r["image"], r["iters"])] = r
    def measured(img, data: bytes) -> dict:  # a real file's rate, and its decoded PSNR
        return {"bpp": 8 * len(data) / (img.shape[0] * img.shape[1]), "psnr": psnr(img, codec.decompress(data)[0])}

    rows = []
    for p in sorted(Path(a.crops).glob("*.png")):
        img = load_rgb(p)[0]
        t0 = time.perf_counter()
        data, _ = codec.compress(img)
        enc_s = time.perf_counter() - t0
        row = {"image": p.name, **measured(img, data), "enc_s": enc_s}
        if a.plain:  # the same crop without h: the comparison where no refine_ab records fit the model
            codec.runner.refine_fn = None
            plain = measured(img, codec.compress(img)[0])
            codec.runner.refine_fn = refine_fn
            row["bpp_0"], row["psnr_0"] = plain["bpp"], plain["psnr"]
        # the ceiling: PSNR of f^-1(y, 0) with y unquantised, before and after the correction
        # (crops whose sides are multiples of 64, as refine_ab's)
        with torch.no_grad():
            x = torch.from_numpy(np.array(img, np.float32)).permute(2, 0, 1)[None] / 255.0
            y0, z = model.analysis(x)
            for key, yy in (("ceiling_0", y0), ("ceiling", h(y0, z))):
                xh = model.synthesis(yy, model.zeros_z(yy)).clamp(0, 1)
                row[key] = psnr(img, np.rint(xh[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
        for it in (0, 60):
            if (p.name, it) in records and f"bpp_{it}" not in row:
                row[f"bpp_{it}"], row[f"psnr_{it}"] = records[(p.name, it)]["bpp"], records[(p.name, it)]["psnr"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"q": a.q, "steps": s["step"], "images": len(rows), "keep_better": a.keep_better,
               "tiles_refined": sum(kept), "tiles": len(kept)}
    for key in ("ceiling", "ceiling_0"):
        summary[key] = float(np.mean([r[key] for r in rows]))
    for key in ("", "_0", "_60"):
        if all(f"bpp{key}" in r for r in rows):
            summary[f"bpp{key}"] = float(np.mean([r[f"bpp{key}"] for r in rows]))
            summary[f"psnr{key}"] = float(np.mean([r[f"psnr{key}"] for r in rows]))
    # local BD-rate at one lambda: rate change at equal PSNR with the ILC curve's slope
    # (1.547 dB per ln(bpp) at q2, docs/research.md section 2), averaged over the images
    for key in ("_0", "_60"):
        if f"bpp{key}" in summary:
            d = [math.log(r["bpp"] / r[f"bpp{key}"]) - (r["psnr"] - r[f"psnr{key}"]) / a.slope for r in rows]
            summary[f"local_bd_vs{key}"] = math.exp(float(np.mean(d))) - 1
    (Path(a.out) / f"eval{a.tag}.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


def report(a) -> dict:
    """True BD-rates (Bjontegaard, PSNR-RGB, over the qualities evaluated) of the amortised
    curve against the unrefined ILC, the 60-step refinement, the baseline and Pillow JPEG, all
    on the same crops (refine_ab's records)."""
    from ilc_export.verify.rd import bd_rate
    from refine_ab import curve

    rec = Path(a.records)
    recs = {k: [json.loads(x) for x in (rec / f"{k}.jsonl").read_text().splitlines()] for k in ("ilc", "baseline")}
    am, ceil = [], {}
    for e in a.evals:
        res = json.loads(Path(e).read_text())
        q = res["summary"]["q"]
        am += [{"q": q, "image": r["image"], "bpp": r["bpp"], "psnr": r["psnr"]} for r in res["rows"]]
        ceil[q] = (res["summary"]["ceiling_0"], res["summary"]["ceiling"], res["summary"]["steps"])
    qs = sorted({r["q"] for r in am})
    images = {r["image"] for r in am}
    pick = lambda rs, it: [r for r in rs if r["iters"] == it and r["q"] in qs and r["image"] in images]  # noqa: E731
    curves = {"ILC": curve(pick(recs["ilc"], 0), "ilc"), "ILC refine 60": curve(pick(recs["ilc"], 60), "ilc"),
              "ILC amortised": curve(am, "ilc"), "baseline": curve(pick(recs["baseline"], 0), "baseline")}
    jpeg = rec / f"pillow_jpeg_{len(images)}.json"
    if jpeg.exists():
        curves["Pillow JPEG"] = json.loads(jpeg.read_text())
    refs = [k for k in ("Pillow JPEG", "ILC", "ILC refine 60", "baseline") if k in curves]
    lines = [f"| curve ({len(images)} crops, q{'/'.join(map(str, qs))}) | bpp | PSNR | " + " | ".join(f"vs {k}" for k in refs) + " |",
             "|---|---|---|" + "---|" * len(refs)]
    table = {}
    for n in ("ILC", "ILC refine 60", "ILC amortised", "baseline"):
        c = curves[n]["results"]
        row = {k: bd_rate(curves[k], curves[n]) for k in refs if k != n}
        table[n] = {"curve": c, "bd_rate": row}
        lines.append(f"| {n} | {' / '.join(f'{v:.4f}' for v in c['bpp'])} | {' / '.join(f'{v:.2f}' for v in c['psnr-rgb'])} | "
                     + " | ".join(f"{row[k]:+.1f} %" if k in row else "-" for k in refs) + " |")
    lines.append("")
    lines.append("ceiling (PSNR of f^-1(y, 0), y unquantised), before -> after h: " +
                 ", ".join(f"q{q} {c0:.2f} -> {c1:.2f} dB ({st} steps)" for q, (c0, c1, st) in sorted(ceil.items())))
    out = {"table": table, "ceiling": {str(q): v for q, v in ceil.items()}, "images": sorted(images)}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print("\n".join(lines))
    return out


def _h_of(s: dict, cfg) -> Correction:
    """h as a train folder's state ``s`` holds it, for a model of config ``cfg``."""
    h = Correction(cfg.latent_channels, cfg.z_channels, s["hidden"], s.get("k_in", 3))
    h.load_state_dict(s["h"])
    return h


def _run_model(a) -> Path:
    """Where h trained with g goes as a new model: ``--run`` (<kind>_q<N>, a run folder for
    scripts/ship_models.py); the add-on is then labelled for it, and relabelled with
    ``ship --from-addon`` once the run has shipped."""
    if not a.run:
        raise SystemExit(f"{a.out}: g was trained with h, so this is a new model: pass --run <folder>/<kind>_q<N>")
    dst = Path(a.run) / "model.safetensors"
    if dst.exists() and not a.force:
        raise SystemExit(f"{dst} exists; pass --force to replace it")
    return dst


def _write_run(a, s: dict, dst: Path) -> None:
    """Write the model with the g of train state ``s`` to ``dst`` (see ``_run_model``)."""
    from ilc_export.contract.model_id import model_id_of_file
    from ilc_reference.checkpoint import save_checkpoint

    src = Path(a.ckpt)
    info = json.loads(src.with_suffix(".json").read_text()).get("info", {}) if src.with_suffix(".json").exists() else {}
    info = {k: v for k, v in info.items() if k != "shipped_from"}
    model = _with_decoder(load_model(src), s["decoder"], s)
    stage = {"from": src.name, "from_id": model_id_of_file(src), "steps": int(s["step"]), **s["decoder"],
             "trained": "scripts/amortised_refine.py train --train-g (f and the hyperprior frozen)"}
    if model.cfg.has_post:  # trained with g whether added now or already the model's own
        stage["post_hidden"] = model.cfg.post_hidden
    prev = info.get("decoder_finetune")  # a fine-tuned model fine-tuned again: steps add up, stages are kept
    info["decoder_finetune"] = stage if prev is None else {
        **stage, "steps": int(prev["steps"]) + stage["steps"], "stages": prev.get("stages", [prev]) + [stage]}
    save_checkpoint(model, dst, info=info)
    parts = "g" + (" + y head" if s["decoder"]["refine_y"] else "") + (" + post-filter" if model.cfg.has_post else "")
    print(f"wrote {dst} ({parts} after {s['step']} steps); "
          f"ship it with scripts/ship_models.py {dst.parent}")


def ship(a) -> None:
    """h.pt (or an add-on trained for the same weights before their codec tables were built)
    -> the checkpoint's encoder add-on (never overwriting one unless --force)."""
    from ilc_export.contract.encoder_addon import addon_path, read_addon_meta
    from ilc_export.contract.model_id import model_id_of_file
    from ilc_reference.checkpoint import read_config
    from ilc_reference.encoder_addon import relabel_addon

    ckpt = Path(a.ckpt)
    if (a.out is None) == (a.from_addon is None):
        raise SystemExit("ship takes one of --out (a train folder) and --from-addon")
    s = torch.load(Path(a.out) / "h.pt", map_location="cpu") if a.out else None
    new_model = s is not None and s.get("decoder") is not None  # g was trained too: a new model, as a run folder
    if new_model:
        ckpt = _run_model(a)
    dst = Path(a.addon) if a.addon else addon_path(ckpt)
    if dst.exists() and not a.force:  # refused before anything is written
        raise SystemExit(f"{dst} exists; pass --force to replace it")
    if new_model:
        _write_run(a, s, ckpt)
    note = {"note": a.note} if a.note else {}
    if a.from_addon:
        out = relabel_addon(a.from_addon, dst, model_id_of_file(ckpt), note)
    else:
        info = {"trained": "scripts/amortised_refine.py train (every model weight frozen)", "steps": int(s["step"]), **note}
        out = save_addon(_h_of(s, read_config(ckpt)), dst, model_id_of_file(ckpt), info)
    print(f"wrote {out} ({read_addon_meta(out)['info'].get('steps')} steps)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--ckpt", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=30)
    t.add_argument("--steps", type=int, default=10**9)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--crop", type=int, default=256)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--k-in", type=int, default=3, choices=[1, 3], help="kernel of h's first conv (1: 9x fewer weights there)")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    t.add_argument("--rate", default="ste", choices=["ste", "noise"], help="rate term's quantisation proxy (objective)")
    t.add_argument("--train-g", action="store_true", help="train the decoder-side g with h (f and the hyperprior "
                   "stay frozen): a new decoder, so shipping makes a new model")
    t.add_argument("--g-hidden", type=int, default=None, help="with --train-g: widen g to this many hidden channels")
    t.add_argument("--refine-y", action="store_true", help="with --train-g: give g the y-refinement head (g_refine_y)")
    t.add_argument("--g-lr", type=float, default=2e-5, help="with --train-g: g's learning rate (its stored weights "
                   "are scaled by g_lr_scale)")
    t.add_argument("--post-hidden", type=int, default=0, help="with --train-g: add an image-domain post-filter "
                   "this wide after f^-1, or widen the model's own to it (cfg.post_hidden; 0: none)")
    t.add_argument("--warmup-steps", type=int, default=20, help="ramp every lr up linearly over the first N "
                   "steps of this run (counted from its step 0, so a resumed run past N is unaffected)")
    t.add_argument("--decay-to", type=float, default=1.0, help="decay every lr along a half cosine to this "
                   "multiple over --minutes (1: constant); the schedule is stored, so a resumed run goes on "
                   "along it and stops at its end")
    t.add_argument("--post-lr", type=float, default=1e-3, help="the post-filter's learning rate (added with "
                   "--post-hidden or the model's own)")
    t.add_argument("--train-hyper", action="store_true", help="with --train-g: train the hyperprior too (h_a, "
                   "its synthesis and the factorised prior; new tables), for h's y' and w's rate")
    t.add_argument("--hyper-lr", type=float, default=2e-5, help="with --train-hyper: the hyperprior's learning rate")
    t.add_argument("--init-addon", default=None, help="start h from this encoder add-on (when --out has no h.pt; "
                   "same --hidden)")
    e = sub.add_parser("eval")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--crops", required=True)
    e.add_argument("--records", default=None, help="refine_ab records (same crops) to compare with")
    e.add_argument("--q", type=int, default=2)
    e.add_argument("--slope", type=float, default=1.547, help="dB per ln(bpp) for the local BD-rate")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--keep-better", action="store_true", help="per tile, keep y where h does not lower the objective")
    e.add_argument("--tag", default="", help="suffix of eval.json (eval<tag>.json)")
    e.add_argument("--calib", default=None, help="with a trained hyperprior: the calibration images of its "
                   "tables (default: ship_models.py's)")
    e.add_argument("--plain", action="store_true", help="also encode each crop without h (bpp_0, psnr_0)")
    r = sub.add_parser("report")
    r.add_argument("evals", nargs="+", help="eval*.json of each quality")
    r.add_argument("--records", required=True, help="refine_ab run folder (ilc.jsonl, baseline.jsonl, pillow_jpeg_N.json)")
    r.add_argument("--json", default=None)
    s = sub.add_parser("ship", help="write h.pt as the checkpoint's encoder add-on")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--out", default=None, help="the train folder (h.pt)")
    s.add_argument("--from-addon", default=None, help="an add-on made for the same weights before their tables "
                   "were built (gpu_post_amortised.sh), instead of --out")
    s.add_argument("--addon", default=None, help="where to write it (default: <ckpt stem>.encoder.safetensors)")
    s.add_argument("--run", default=None, help="for h trained with g (--train-g): the run folder (<kind>_q<N>) to "
                   "write the new model to; the add-on goes next to it")
    s.add_argument("--note", default="", help="a line for the add-on's info (budget, data)")
    s.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    {"train": train, "eval": evaluate, "report": report, "ship": ship}[a.cmd](a)


if __name__ == "__main__":
    main()
