"""Parity of two runners of one model: ``compare_runners`` for any pair of backends, and
``verify_export`` for an ONNX export against the PyTorch reference it was exported from.

For every precision (fp32, fp16) and image:

* each graph is fed the *same* inputs as the reference (forward: the padded image;
  hyper_mean: round(w) from torch; inverse: torch's y_hat = round(y - mu) + mu and z = 0),
  so the errors of one graph do not leak into the next; max-abs / mean-abs / max-rel error
  per output, compared with Polygraphy's comparator (atol + rtol*|ref|, on the max);
* the whole decode chain on ONNX Runtime alone (forward -> round(w) -> hyper_mean ->
  round(y - mu) + mu -> inverse with z = 0) gives the reconstruction, cropped, rounded and
  clipped to 8 bits; its PSNR against the torch chain's reconstruction must reach a floor.

Identical 8-bit reconstructions report PSNR_CAP dB (not infinity) so the report stays JSON.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..backends.base import BackendError
from ..contract.encoder_addon import addon_path
from ..contract.files import sha256_file
from ..contract.geometry import PAD_MULTIPLE
from ..contract.graphs import GRAPHS
from ..contract.manifest import ManifestError, read_manifest, verify_files
from ..contract.model_id import model_id_of_file
from ..contract.errors import IlcError
from ..pipeline.models import encoder_addon_of

PSNR_CAP = 100.0

#: per precision: atol, rtol on graph outputs (|ort - torch| <= atol + rtol*|torch|, max over
#: elements) and the reconstruction PSNR floor (dB, 8-bit, ORT chain vs torch chain)
DEFAULT_TOLERANCES = {
    "fp32": {"atol": 1e-3, "rtol": 1e-3, "min_psnr": 50.0},
    "fp16": {"atol": 0.1, "rtol": 0.02, "min_psnr": 35.0},
}


class VerifyError(IlcError, RuntimeError):
    pass


def _psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def _to8(x: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.clip(np.round(x[:, :, :h, :w] * 255.0), 0, 255).astype(np.uint8)


def _synthetic_image(h: int = 128, w: int = 192) -> np.ndarray:
    """A deterministic test pattern (gradients, edges, texture) for when no image is given."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 0.5 + 0.5 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    g = (xx + yy) / (h + w)
    b = ((xx // 16 + yy // 16) % 2) * 0.6 + 0.2 + 0.1 * np.sin(xx * yy / 50.0)
    return np.clip(np.round(np.stack([r, g, b], -1) * 255), 0, 255).astype(np.uint8)


def _load_images(images) -> list[tuple[str, np.ndarray]]:
    from ..pipeline.image_io import load_rgb

    out = []
    if images is None:
        return [("synthetic-128x192", _synthetic_image())]
    for i, im in enumerate(images):
        if isinstance(im, np.ndarray):
            arr = im if im.dtype == np.uint8 else np.clip(np.round(im * 255), 0, 255).astype(np.uint8)
            out.append((f"array{i}", arr))
        else:
            arr, _ = load_rgb(Path(im))
            out.append((Path(im).name, arr))
    if not out:
        raise VerifyError("no images to verify with")
    return out


def _find_checkpoint(export_dir: Path, manifest: dict, ckpt: Path | None) -> Path:
    src = manifest.get("source") or {}
    if ckpt is None:
        cands = []
        if src.get("path"):
            cands.append(Path(src["path"]))
        if src.get("checkpoint"):
            cands += [export_dir / src["checkpoint"], export_dir.parent / src["checkpoint"],
                      export_dir.parent.parent / src["checkpoint"]]
        found = [c for c in cands if c.is_file()]
        if not found:
            raise VerifyError(
                f"{export_dir}: cannot find the source checkpoint {src.get('checkpoint')!r} "
                f"(looked at {', '.join(map(str, cands)) or 'nothing'}); pass --ckpt"
            )
        ckpt = found[0]
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise VerifyError(f"checkpoint not found: {ckpt}")
    if src.get("sha256") and sha256_file(ckpt) != src["sha256"]:
        mid = model_id_of_file(ckpt)
        if mid != manifest["model_id"]:
            raise VerifyError(
                f"{ckpt} is not the checkpoint {export_dir} was exported from "
                f"(model id {mid} vs {manifest['model_id']}); re-export or pass the right --ckpt"
            )
    return ckpt


def _compare(ref: dict, got: dict, tol: dict, names: tuple[str, str] = ("torch", "onnxruntime")) -> dict:
    """Per output: max/mean abs error, max rel error, pass (Polygraphy comparator when present)."""
    res = {}
    poly = None
    try:
        from polygraphy.comparator import IterationResult, SimpleCompareFunc
        from polygraphy.logger import G_LOGGER

        G_LOGGER.module_severity = G_LOGGER.CRITICAL
        func = SimpleCompareFunc(atol={"": tol["atol"]}, rtol={"": tol["rtol"]}, check_error_stat="max")
        nonempty = {k for k in ref if ref[k].size}
        poly = func(
            IterationResult({k: ref[k] for k in nonempty}, runner_name=names[0]),
            IterationResult({k: got[k] for k in nonempty}, runner_name=names[1]),
        )
    except ImportError:
        pass
    for k, r in ref.items():
        g = got[k]
        if r.shape != g.shape:
            res[k] = {"pass": False, "error": f"shape {g.shape} != reference {r.shape}"}
            continue
        d = np.abs(g.astype(np.float64) - r.astype(np.float64))
        finite = bool(np.isfinite(g).all())
        ok = finite and bool(np.all(d <= tol["atol"] + tol["rtol"] * np.abs(r)))
        if poly is not None and k in poly:
            ok = ok and bool(poly[k])
        res[k] = {
            "max_abs": float(d.max(initial=0.0)),
            "mean_abs": float(d.mean()) if d.size else 0.0,
            "max_rel": float((d / np.maximum(np.abs(r), 1e-6)).max(initial=0.0)),
            "finite": finite,
            "pass": ok,
        }
    return res


def _merge(acc: dict, new: dict) -> None:
    for k, v in new.items():
        if k not in acc:
            acc[k] = dict(v)
            continue
        a = acc[k]
        if "max_abs" in v and "max_abs" in a:
            a["max_abs"] = max(a["max_abs"], v["max_abs"])
            a["max_rel"] = max(a["max_rel"], v["max_rel"])
            a["mean_abs"] = max(a["mean_abs"], v["mean_abs"])  # worst image's mean
            a["finite"] = a["finite"] and v["finite"]
        a["pass"] = a["pass"] and v["pass"]


def decode_chain(runner, x: np.ndarray) -> dict:
    """One runner's float decode chain on a padded NCHW image: forward -> round(w) ->
    hyper_mean -> round(y - mu) + mu -> inverse with z = 0. Returns every graph's inputs and
    outputs, so another runner's graphs can be fed the same inputs."""
    f = runner.run("forward", {"image": x})
    w_hat = np.round(f["w"])
    mu = runner.run("hyper_mean", {"w_hat": w_hat})["mu"]
    y_hat = (np.round(f["y"] - mu) + mu).astype(np.float32)
    inv_in = {"y_hat": y_hat, "z": np.zeros_like(f["z"])}
    return {"x": x, "forward": f, "hyper_mean_in": {"w_hat": w_hat}, "hyper_mean": {"mu": mu},
            "inverse_in": inv_in, "inverse": runner.run("inverse", inv_in)}


def compare_runners(reference, candidate, images, tol: dict, pad: int = PAD_MULTIPLE) -> dict:
    """Parity of any two runners of one model (torch vs ONNX Runtime, ONNX Runtime vs TensorRT).

    images: (name, HxWx3 uint8) pairs. Each of the candidate's graphs gets the reference's
    inputs, so errors do not leak from graph to graph; then the candidate's whole chain is
    compared with the reference's as 8-bit reconstructions (PSNR against tol["min_psnr"])."""
    from ..pipeline.image_io import pad_to_multiple, to_nchw

    names = (reference.name, candidate.name)
    graphs: dict[str, dict] = {g: {} for g in GRAPHS}
    recon = []
    for name, arr in images:
        h, w = arr.shape[:2]
        r = decode_chain(reference, to_nchw(pad_to_multiple(arr, pad)))
        for g, feeds in (("forward", {"image": r["x"]}), ("hyper_mean", r["hyper_mean_in"]), ("inverse", r["inverse_in"])):
            _merge(graphs[g], _compare(r[g], candidate.run(g, feeds), tol, names))
        c = decode_chain(candidate, r["x"])
        ref8, x8, orig8 = _to8(r["inverse"]["image"], h, w), _to8(c["inverse"]["image"], h, w), _to8(r["x"], h, w)
        symbols = [np.round(d["forward"]["y"] - d["hyper_mean"]["mu"]) for d in (c, r)]
        recon.append({
            "image": name,
            "psnr_vs_torch": _psnr8(x8, ref8),
            "psnr_torch_vs_original": _psnr8(ref8, orig8),
            "psnr_onnx_vs_original": _psnr8(x8, orig8),
            "finite": bool(np.isfinite(c["inverse"]["image"]).all()),
            "symbols_differing": int(np.sum(symbols[0] != symbols[1])),
        })
    psnr_min = min(x["psnr_vs_torch"] for x in recon)
    ok_graphs = all(o["pass"] for g in graphs.values() for o in g.values())
    ok_recon = psnr_min >= tol["min_psnr"] and all(x["finite"] for x in recon)
    return {"graphs": graphs, "reconstruction": recon, "psnr_vs_torch_min": psnr_min, "graphs_pass": ok_graphs,
            "reconstruction_pass": ok_recon, "pass": ok_graphs and ok_recon}


def _addon_of(manifest: dict, ckpt: Path) -> bool:
    """Whether the torch reference must use the checkpoint's encoder add-on: as the export did,
    and the same file (VerifyError when it is missing or another one)."""
    rec = manifest.get("encoder_addon")
    if not rec:
        return False
    if encoder_addon_of(ckpt) != rec.get("sha256"):
        raise VerifyError(f"the export's forward graph has encoder add-on {rec.get('file')} "
                          f"(sha256 {str(rec.get('sha256'))[:12]}…), which is not at {addon_path(ckpt)}")
    return True


def verify_export(
    export_dir: Path,
    ckpt: Path | None = None,
    images=None,
    precisions=("fp32", "fp16"),
    tolerances: dict | None = None,
    threads: int | None = 1,
    providers=None,
    progress=None,
    device: str | None = None,
) -> dict:
    """Compare an export folder's ONNX Runtime graphs with the torch checkpoint; returns a report.

    `images`: paths or uint8 HxWx3 arrays (default: a synthetic 128x192 pattern). Precisions
    missing from the export are reported as skipped, not failed. ``report["pass"]`` is the verdict.
    providers: onnxruntime execution providers (``backends.onnxrt.loader.parse_providers``); device: where
    the torch reference runs (cpu, cuda[:N]).
    """
    from ..backends.onnxrt.loader import load as load_ort
    from ..backends.pytorch.loader import load as load_torch

    say = progress or (lambda msg: None)
    export_dir = Path(export_dir)
    try:
        manifest = read_manifest(export_dir)
        verify_files(export_dir, manifest)
    except ManifestError as e:
        raise VerifyError(str(e)) from e
    tol = {p: dict(v) for p, v in DEFAULT_TOLERANCES.items()}
    for p, v in (tolerances or {}).items():
        tol.setdefault(p, {}).update(v)
    ckpt = _find_checkpoint(export_dir, manifest, ckpt)
    pad = int(manifest.get("pad_multiple", PAD_MULTIPLE))
    say(f"loading {ckpt.name}")
    try:
        reference = load_torch(ckpt, device=device, threads=threads, encoder_addon=_addon_of(manifest, ckpt))
    except BackendError as e:
        raise VerifyError(str(e)) from e
    imgs = _load_images(images)
    report = {
        "export_dir": str(export_dir),
        "checkpoint": str(ckpt),
        "model_id": manifest["model_id"],
        "model_name": manifest.get("model_name"),
        "images": [name for name, _ in imgs],
        "torch_device": reference.device,
        "tolerances": tol,
        "precisions": {},
    }
    verdict = True
    for prec in precisions:
        if prec not in manifest["precisions"]:
            report["precisions"][prec] = {"skipped": f"export has no {prec} graphs"}
            continue
        say(f"running onnxruntime {prec}")
        with load_ort(export_dir, threads=threads, providers=providers, precision=prec, verify=False) as runner:
            res = compare_runners(reference, runner, imgs, tol[prec], pad)
        report["precisions"][prec] = {"providers": list(runner.providers), **res}
        verdict = verdict and res["pass"]
    report["pass"] = verdict
    return report


def format_report(report: dict) -> str:
    """A short human-readable summary (the CLI prints this)."""
    lines = [f"{report['export_dir']}  model {report.get('model_name')} id {report['model_id'][:16]}  "
             f"images: {', '.join(report['images'])}"]
    for prec, p in report["precisions"].items():
        if "skipped" in p:
            lines.append(f"  {prec}: skipped ({p['skipped']})")
            continue
        lines.append(f"  {prec}: {'PASS' if p['pass'] else 'FAIL'}  reconstruction PSNR vs torch >= {p['psnr_vs_torch_min']:.2f} dB")
        for g, outs in p["graphs"].items():
            for k, o in outs.items():
                if "max_abs" in o:
                    lines.append(f"    {g:10s} {k:6s} max_abs {o['max_abs']:.3e}  mean_abs {o['mean_abs']:.3e}  {'ok' if o['pass'] else 'FAIL'}")
                else:
                    lines.append(f"    {g:10s} {k:6s} {o.get('error')}  FAIL")
    lines.append("PASS" if report["pass"] else "FAIL")
    return "\n".join(lines)
