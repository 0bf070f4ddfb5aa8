"""`ilc-run`: compress, decompress and evaluate images with a deployed ILC model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from ..pipeline import api
from .common import (DeviceOpt, ProviderOpt, device_options, fail, note, option_groups, out, progress,
                     user_errors, version_option, warn)
from .scale import EngineOpt, RayAddressOpt, WorkersOpt, batch_job, engine_batch, open_engine, print_summary

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _main(version: bool = version_option("ilc-run")):
    """Compress, decompress and evaluate images with a deployed ILC model."""


BackendOpt = typer.Option(None, "--backend", "-b", help="torch | onnxruntime | tensorrt (default: from --model; "
                          "a checkpoint runs on torch when PyTorch is installed, else on onnxruntime with its export)")
ModelOpt = typer.Option(None, "--model", "-m", help="checkpoint (.safetensors), ONNX export folder, engine folder "
                        "or shipped model name (ilc-q2, baseline-q1); default: the shipped ilc-q<Q>")
PrecisionOpt = typer.Option(None, "--precision", "-p", help="fp32 | fp16 graphs (onnxruntime / tensorrt; "
                            "default: fp32 for onnxruntime, whatever the engine folder holds for tensorrt); "
                            "torch: fp16 transforms with --device cuda")
ThreadsOpt = typer.Option(None, "--threads", help="intra-op threads for the backend, >= 1 (default: all cores)")
JobsOpt = typer.Option(1, "--jobs", "-j", help="images coded concurrently (threads sharing one model); "
                       "e.g. -j 2 --threads 1 on a 2-core machine")
ForceOpt = typer.Option(False, "--force", "-f", help="overwrite existing output files")
MaxPixelsOpt = typer.Option(None, "--max-pixels", help="largest image accepted, in pixels (default: Pillow's "
                            "MAX_IMAGE_PIXELS, 89,478,485; 0 = no limit)")


@dataclass
class Backend:
    """-b / -p / --device / --provider / --threads: which backend runs the model, and how."""

    backend: Optional[str] = BackendOpt
    precision: Optional[str] = PrecisionOpt
    device: Optional[str] = DeviceOpt
    provider: Optional[str] = ProviderOpt
    threads: Optional[int] = ThreadsOpt

    def options(self) -> dict:
        """The backend loader's options (precision aside: models.resolve reads it too)."""
        if self.threads is not None and self.threads < 1:
            raise api.UsageError(f"--threads must be at least 1, got {self.threads}")
        return ({"threads": self.threads} if self.threads else {}) | device_options(self.device, self.provider)


@dataclass
class Engine:
    """--engine / --ray-address / --workers: where a batch runs."""

    engine: str = EngineOpt
    ray_address: Optional[str] = RayAddressOpt
    workers: Optional[int] = WorkersOpt

    def open(self, jobs: int = 1):
        return open_engine(self.engine, self.ray_address, self.workers, jobs)


def _output_opt(what: str, default: str):
    return typer.Option(None, "-o", "--output", help=f"output {what} (one input) or folder (default: {default})")


def batch_command(name: str | None = None):
    """A command over many files: one-line errors, the Backend options as `run`, the Engine ones as `eng`."""
    return lambda fn: app.command(name)(user_errors(option_groups(run=Backend, eng=Engine)(fn)))


def _check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise api.UsageError(f"--jobs must be at least 1, got {jobs}")


def _set_max_pixels(max_pixels: int | None) -> None:
    """--max-pixels sets Pillow's decompression-bomb limit for this process: the limit both
    reading images (compress) and the decoder's pixel check (decompress) honour."""
    if max_pixels is None:
        return
    if max_pixels < 0:
        raise api.UsageError(f"--max-pixels must be 0 (no limit) or positive, got {max_pixels}")
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels or None


def _z_options(z_seed: int | None, z_temperature: float | None) -> dict:
    import math

    from ..codec.bitstream import MAX_TEMPERATURE

    if z_seed is None and z_temperature is None:
        return {}
    if z_seed is None:
        raise api.UsageError("--z-temperature needs --z-seed S (the decoder draws z from the seed stored in the file)")
    if z_temperature is None:
        raise api.UsageError("--z-seed needs --z-temperature T > 0 (the decoder draws z ~ N(0, T^2); "
                             "without both options z = 0)")
    if not 0 <= z_seed < 2**64:
        raise api.UsageError(f"--z-seed must be in 0 .. 2^64-1, got {z_seed}")
    if not (math.isfinite(z_temperature) and 0 < z_temperature <= MAX_TEMPERATURE):
        raise api.UsageError(f"--z-temperature must be in (0, {MAX_TEMPERATURE:g}], got {z_temperature}")
    warn(f"--z-temperature {z_temperature:g}: the decoder will draw z ~ N(0, {z_temperature:g}^2) instead of "
         "z = 0, which lowers PSNR (by several dB, more at larger T; see docs/usage.md)")
    return {"z_seed": z_seed, "z_temperature": z_temperature}


@batch_command()
def compress(
    inputs: list[str] = typer.Argument(..., help="images, folders or globs"),
    output: Optional[Path] = _output_opt("file", "x.ilc beside each input x.png"),
    model: Optional[str] = ModelOpt,
    quality: Optional[int] = typer.Option(None, "--quality", "-q", help="shipped quality level (1 = smallest "
                                          "files; default 2); not with --model"),
    run: Backend = None,
    z_seed: Optional[int] = typer.Option(None, help="decode with a seeded z ~ N(0, T^2) instead of z = 0 "
                                         "(needs --z-temperature)"),
    z_temperature: Optional[float] = typer.Option(None, help="T > 0 for --z-seed; lowers PSNR"),
    jobs: int = JobsOpt,
    tile: Optional[int] = typer.Option(None, "--tile", help="largest tile side in pixels (a multiple of 64; "
                                       "0 = never tile; default 1024): larger images are coded tile by tile"),
    force: bool = ForceOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    refine: int = typer.Option(0, "--refine", min=0, help="encoder effort: gradient steps per tile that choose "
                               "the latents this model's decoder reconstructs best (torch backend; e.g. 60; "
                               "much slower encoding, smaller files or higher PSNR, any backend decodes)"),
    no_encoder_addon: bool = typer.Option(False, "--no-encoder-addon", help="encode without the checkpoint's "
                                          "encoder add-on (torch backend; more bits for the same quality; any "
                                          "backend decodes them)"),
    eng: Engine = None,
):
    """Compress images to .ilc bitstreams."""
    from ..pipeline.tiling import check_tile_option

    opts = run.options()
    if refine:
        opts["refine"] = refine
    if no_encoder_addon:
        opts["encoder_addon"] = False
    _check_jobs(jobs)
    try:
        check_tile_option(tile)
    except ValueError as e:
        raise api.UsageError(str(e)) from None
    zopts = _z_options(z_seed, z_temperature)
    _set_max_pixels(max_pixels)
    batch = eng.open(jobs)
    files = api.expand_inputs(inputs, api.IMAGE_SUFFIXES)
    if not files:
        fail("no input images found")
    dsts = api.plan_outputs(files, output, api.BITSTREAM_SUFFIX, force)
    job = batch_job("compress", model, quality, run.backend, run.precision, opts, force, max_pixels, tile=tile, **zopts)

    def done(src, dst, r):
        for n in r.notes or []:
            note(f"{src}: {n}")
        return f"{src} -> {dst}  {r.stats.num_bytes} bytes  {r.stats.bpp:.4f} bpp  {r.stats.total_time * 1000:.0f} ms"

    engine_batch("compress", batch, job, list(zip(files, dsts)), done)


@batch_command()
def decompress(
    inputs: list[str] = typer.Argument(..., help=".ilc files, folders or globs"),
    output: Optional[Path] = _output_opt("image", "x.decoded.png beside each input x.ilc"),
    model: Optional[str] = ModelOpt,
    run: Backend = None,
    reference: Optional[Path] = typer.Option(None, "--reference", help="original image: print PSNR against it"),
    jobs: int = JobsOpt,
    force: bool = ForceOpt,
    max_pixels: Optional[int] = MaxPixelsOpt,
    eng: Engine = None,
):
    """Decompress .ilc bitstreams to PNG (the model is found from the id in each file)."""
    opts = run.options()
    _check_jobs(jobs)
    _set_max_pixels(max_pixels)
    batch = eng.open(jobs)
    files = api.expand_inputs(inputs, {api.BITSTREAM_SUFFIX})
    if not files:
        fail("no input bitstreams found")
    if reference is not None and len(files) != 1:
        raise api.UsageError("--reference needs exactly one input file")
    dsts = api.plan_outputs(files, output, ".png", force)
    job = batch_job("decompress", model, None, run.backend, run.precision, opts, force, max_pixels)

    def done(src, dst, r):
        msg = f"{src} -> {dst}  {r.stats.width}x{r.stats.height}  {r.stats.total_time * 1000:.0f} ms"
        if reference is not None:
            from ..pipeline.image_io import load_rgb
            from ..pipeline.metrics import psnr

            msg += f"  PSNR {psnr(load_rgb(reference)[0], load_rgb(dst)[0]):.2f} dB  {r.stats.bpp:.4f} bpp"
        return msg

    engine_batch("decompress", batch, job, list(zip(files, dsts)), done)


@app.command()
@user_errors
def demo(
    image: Optional[Path] = typer.Argument(None, help="image (default: the shipped sample)"),
    quality: Optional[int] = typer.Option(None, "--quality", "-q", help="shipped quality (default 2); not with --model"),
    backend: Optional[str] = BackendOpt,
    model: Optional[str] = ModelOpt,
    precision: Optional[str] = PrecisionOpt,
    device: Optional[str] = DeviceOpt,
    provider: Optional[str] = ProviderOpt,
    output: Path = typer.Option(Path("out"), "-o", "--output", help="folder for the .ilc and decoded PNG"),
    force: bool = typer.Option(False, "--force", "-f", help="overwrite NAME.ilc / NAME.decoded.png instead of "
                               "choosing new names (NAME-2.ilc, ...)"),
):
    """Compress and decompress one image through real files; print bpp and PSNR."""
    from ..pipeline.demo import run_demo

    r = run_demo(image, quality=quality, backend=backend, model=model, out_dir=output, precision=precision,
                 force=force, **device_options(device, provider))
    out.print(
        f"{r['image']}: {r['width']}x{r['height']}  {r['bytes']} bytes  {r['bpp']:.4f} bpp  "
        f"PSNR {r['psnr']:.2f} dB  MS-SSIM {r['ms_ssim']:.4f}  (model {r['model']}, backend {r['backend']})\n"
        f"  wrote {r['bitstream']} and {r['decoded']}; encode {r['encode_s']*1000:.0f} ms, decode {r['decode_s']*1000:.0f} ms",
        highlight=False, markup=False,
    )


@batch_command("eval")
def eval_cmd(
    directory: Path = typer.Argument(..., help="folder of images (e.g. Kodak)"),
    json_out: Path = typer.Option(..., "--json", help="results JSON (CompressAI format)"),
    qualities: Optional[str] = typer.Option(None, "--quality", "-q", help="comma list (default: every shipped quality)"),
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="one model per point instead of shipped "
                                              "qualities (checkpoint, export / engine folder or shipped name)"),
    run: Backend = None,
    limit: Optional[int] = typer.Option(None, help="only the first N images"),
    force: bool = ForceOpt,
    eng: Engine = None,
):
    """Compress + decompress every image through real files; report bpp, PSNR, MS-SSIM, times."""
    from ..pipeline.models import resolve
    from ..verify.rd import evaluate_codec, write_results_json

    opts = run.options()
    backend, precision = run.backend, run.precision
    if model and qualities:
        raise api.UsageError("give either --model or --quality, not both")
    if json_out.exists() and not force:
        raise api.OutputError(f"{json_out} already exists; pass --force to overwrite, or choose another --json")
    try:
        qs = [int(q) for q in qualities.split(",")] if qualities else None
    except ValueError:
        raise api.UsageError(f"--quality takes a comma list of integers, got {qualities!r}") from None
    if model:
        resolved = [resolve(m, None, backend, precision) for m in model]
    else:
        from ..pipeline.models import shipped_qualities

        resolved = [resolve(None, q, backend, precision) for q in (qs or shipped_qualities())]
    if not resolved:
        raise api.UsageError("no shipped qualities found; pass --model")
    backends = {r.backend for r in resolved}
    if len(backends) != 1:
        raise api.UsageError(f"the models run on different backends ({', '.join(sorted(backends))}); pass --backend")
    be = backends.pop()
    if precision is not None:
        opts["precision"] = precision
    batch = eng.open()
    summary = []
    try:
        with progress() as prog:
            res = evaluate_codec(directory, models=[r.source for r in resolved], backend=be, limit=limit,
                                 progress=prog, engine=batch, on_summary=summary.append, **opts)
    finally:
        batch.close()
    if summary and batch.remote:
        print_summary(summary[0])
    write_results_json(res, json_out)
    r = res["results"]
    for i in range(len(r["bpp"])):
        name = res["per_image"][i][0].get("model", f"point {i + 1}")
        out.print(f"{name}: {r['bpp'][i]:.4f} bpp  PSNR {r['psnr-rgb'][i]:.2f} dB  MS-SSIM {r['ms-ssim-rgb'][i]:.4f}  "
                  f"enc {r['encoding_time'][i]:.3f} s  dec {r['decoding_time'][i]:.3f} s", highlight=False, markup=False)
    out.print(f"wrote {json_out}  (backend {be})", highlight=False, markup=False)


@app.command()
@user_errors
def report(
    directory: Path = typer.Argument(..., help="folder of images (e.g. Kodak)"),
    out_dir: Path = typer.Option(Path("report"), "--out", "-o", help="output folder (resumable cache inside)"),
    backends: str = typer.Option("torch", "--backends", help="comma list: torch,onnxruntime,tensorrt"),
    qualities: Optional[str] = typer.Option(None, "--qualities", help="comma list (default: every shipped quality)"),
    export_root: Path = typer.Option(Path("engines"), "--export-root",
                                     help="where ONNX exports / engines live: <root>/ilc-q<Q>/onnx, <root>/ilc-q<Q>/trt"),
    anchors: Optional[Path] = typer.Option(None, "--anchors", help="folder of published curves (CompressAI JSON)"),
    formats: str = typer.Option("JPEG,WEBP,AVIF", "--formats", help="Pillow codecs to sweep"),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="include the conv baseline (paper claim)"),
    limit: Optional[int] = typer.Option(None, help="only the first N images"),
    parity: Optional[list[Path]] = typer.Option(None, "--parity", help="`ilc-export verify --json` outputs to include"),
):
    """RD curves, BD-rates vs JPEG/WebP/AVIF and anchors, speed per backend: report.md + report.html."""
    from ..pipeline.models import shipped_qualities
    from ..verify.report import build_report

    qs = [int(q) for q in qualities.split(",")] if qualities else shipped_qualities()
    bes = [b.strip() for b in backends.split(",") if b.strip()]
    sub = {"onnxruntime": "onnx", "tensorrt": "trt"}
    exports = {be: [export_root / f"ilc-q{q}" / sub[be] for q in qs] for be in bes if be in sub}
    fmts = tuple(f.strip().upper() for f in formats.split(",") if f.strip())
    with progress() as prog:
        s = build_report(directory, out_dir, bes, qs, exports, anchors, fmts, baseline, limit, prog, parity)
    for r in s["bd_rate"]:
        v = r.get("vs_jpeg_psnr-rgb")
        if v is not None:
            out.print(f"{r['codec']}: BD-rate vs Pillow JPEG (PSNR) {v:+.1f}%", highlight=False)
    out.print(f"wrote {out_dir / 'report.md'} and {out_dir / 'report.html'}")


def main():
    app()


if __name__ == "__main__":
    main()
