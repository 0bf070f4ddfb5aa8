"""`ilc-run`: compress, decompress and evaluate images with a deployed ILC model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..pipeline import api
from .common import console, fail, out, progress, user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

BackendOpt = typer.Option("torch", "--backend", "-b", help="torch | onnxruntime | tensorrt")
ModelOpt = typer.Option(None, "--model", "-m", help="checkpoint (.safetensors), ONNX export folder or engine folder")
ThreadsOpt = typer.Option(None, "--threads", help="intra-op threads for the backend (default: all cores)")
JobsOpt = typer.Option(1, "--jobs", "-j", min=1, help="images coded concurrently (threads sharing one model); "
                       "e.g. -j 2 --threads 1 on a 2-core machine")


def _backend_options(threads):
    return {"threads": threads} if threads else {}


@app.command()
@user_errors
def compress(
    inputs: list[str] = typer.Argument(..., help="images, folders or globs"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="output file (one input) or folder"),
    model: Optional[Path] = ModelOpt,
    quality: int = typer.Option(None, "--quality", "-q", help="shipped quality level (1 = smallest files)"),
    backend: str = BackendOpt,
    threads: Optional[int] = ThreadsOpt,
    z_seed: Optional[int] = typer.Option(None, help="decode with a seeded z ~ N(0, T^2) instead of z = 0"),
    z_temperature: float = typer.Option(0.0, help="T for --z-seed"),
    jobs: int = JobsOpt,
    tile: Optional[int] = typer.Option(None, "--tile", help="largest tile side in pixels (a multiple of 64; "
                                       "0 = never tile; default 1024): larger images are coded tile by tile"),
):
    """Compress images to .ilc bitstreams."""
    from ..pipeline.tiling import check_tile_option

    try:
        check_tile_option(tile)
    except ValueError as e:
        fail(str(e))
    files = api.expand_inputs(inputs, api.IMAGE_SUFFIXES)
    if not files:
        fail("no input images found")
    codec = api.open_codec(model, quality, backend, **_backend_options(threads))

    def done(src, dst, r):
        for n in r.notes or []:
            console.print(f"[yellow]note:[/] {src}: {n}", highlight=False)
        return f"{src} -> {dst}  {r.stats.num_bytes} bytes  {r.stats.bpp:.4f} bpp  {r.stats.total_time * 1000:.0f} ms"

    _batch("compress", files, lambda src: api.output_path(src, output, len(files), api.BITSTREAM_SUFFIX),
           lambda src, dst: api.compress_file(codec, src, dst, z_seed=z_seed, z_temperature=z_temperature, tile=tile),
           done, jobs)


def _batch(name, files, dst_of, work, describe, jobs: int = 1):
    """Run `work` over files with a progress bar; report each failure, finish the rest, exit 1 if any failed.

    jobs > 1 runs files concurrently in threads sharing one model: the backends and numpy
    release the GIL, so this helps when each image alone cannot use every core.
    """
    from concurrent.futures import ThreadPoolExecutor

    failed = 0
    pool = ThreadPoolExecutor(jobs) if jobs > 1 else None
    try:
        with progress() as prog:
            task = prog.add_task(name, total=len(files), info="")
            todo = [(src, dst_of(src)) for src in files]
            if pool is None:
                results = ((src, dst, work(src, dst)) for src, dst in todo)
            else:
                futs = [(src, dst, pool.submit(work, src, dst)) for src, dst in todo]
                results = ((src, dst, f.result()) for src, dst, f in futs)  # report in input order
            for src, dst, r in results:
                if r.error:
                    failed += 1
                    console.print(f"[red]error:[/] {r.error}", highlight=False)
                else:
                    out.print(describe(src, dst, r), highlight=False)
                prog.update(task, advance=1, info=src.name)
    finally:
        if pool is not None:  # on Ctrl-C: drop what has not started, let running files finish atomically
            pool.shutdown(wait=True, cancel_futures=True)
    if failed:
        fail(f"{failed} of {len(files)} files failed")


@app.command()
@user_errors
def decompress(
    inputs: list[str] = typer.Argument(..., help=".ilc files, folders or globs"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="output image (one input) or folder"),
    model: Optional[Path] = ModelOpt,
    backend: str = BackendOpt,
    threads: Optional[int] = ThreadsOpt,
    reference: Optional[Path] = typer.Option(None, "--reference", help="original image: print PSNR against it"),
    jobs: int = JobsOpt,
):
    """Decompress .ilc bitstreams to PNG (the model is found from the id in each file)."""
    files = api.expand_inputs(inputs, {api.BITSTREAM_SUFFIX})
    if not files:
        fail("no input bitstreams found")
    cache = api.CodecCache(model, backend, **_backend_options(threads))

    def done(src, dst, r):
        msg = f"{src} -> {dst}  {r.stats.width}x{r.stats.height}  {r.stats.total_time * 1000:.0f} ms"
        if reference is not None and len(files) == 1:
            from ..pipeline.image_io import load_rgb
            from ..pipeline.metrics import psnr

            msg += f"  PSNR {psnr(load_rgb(reference)[0], load_rgb(dst)[0]):.2f} dB  {r.stats.bpp:.4f} bpp"
        return msg

    _batch("decompress", files, lambda src: api.output_path(src, output, len(files), ".png"),
           lambda src, dst: api.decompress_file(cache, src, dst), done, jobs)


@app.command()
@user_errors
def demo(
    image: Optional[Path] = typer.Argument(None, help="image (default: the shipped sample)"),
    quality: int = typer.Option(None, "--quality", "-q"),
    backend: str = BackendOpt,
    model: Optional[Path] = ModelOpt,
    output: Path = typer.Option(Path("out"), "-o", "--output", help="folder for the .ilc and decoded PNG"),
):
    """Compress and decompress one image through real files; print bpp and PSNR."""
    from ..pipeline.demo import run_demo

    r = run_demo(image, quality=quality, backend=backend, model=model, out_dir=output)
    out.print(
        f"{r['image']}: {r['width']}x{r['height']}  {r['bytes']} bytes  {r['bpp']:.4f} bpp  "
        f"PSNR {r['psnr']:.2f} dB  MS-SSIM {r['ms_ssim']:.4f}  (model {r['model']}, backend {backend})\n"
        f"  wrote {r['bitstream']} and {r['decoded']}; encode {r['encode_s']*1000:.0f} ms, decode {r['decode_s']*1000:.0f} ms",
        highlight=False,
    )


@app.command("eval")
@user_errors
def eval_cmd(
    directory: Path = typer.Argument(..., help="folder of images (e.g. Kodak)"),
    json_out: Path = typer.Option(..., "--json", help="results JSON (CompressAI format)"),
    qualities: Optional[str] = typer.Option(None, "--quality", "-q", help="comma list (default: every shipped quality)"),
    backend: str = BackendOpt,
    model: Optional[list[Path]] = typer.Option(None, "--model", "-m", help="one model per point instead of shipped qualities"),
    threads: Optional[int] = ThreadsOpt,
    limit: Optional[int] = typer.Option(None, help="only the first N images"),
):
    """Compress + decompress every image through real files; report bpp, PSNR, MS-SSIM, times."""
    from ..verify.rd import evaluate_codec, write_results_json

    qs = [int(q) for q in qualities.split(",")] if qualities else None
    with progress() as prog:
        res = evaluate_codec(directory, qualities=qs, models=model, backend=backend, limit=limit,
                             progress=prog, **_backend_options(threads))
    write_results_json(res, json_out)
    r = res["results"]
    for i in range(len(r["bpp"])):
        out.print(f"point {i + 1}: {r['bpp'][i]:.4f} bpp  PSNR {r['psnr-rgb'][i]:.2f} dB  MS-SSIM {r['ms-ssim-rgb'][i]:.4f}  "
                  f"enc {r['encoding_time'][i]:.3f} s  dec {r['decoding_time'][i]:.3f} s", highlight=False)
    out.print(f"wrote {json_out}")


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
