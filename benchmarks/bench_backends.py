"""Compress / decompress speed per backend and thread count, measured in one run.

    python benchmarks/bench_backends.py --ckpt model.safetensors                  # Kodak, torch vs ORT, 1 and 2 threads
    python benchmarks/bench_backends.py --ckpt model.safetensors --limit 4 --threads 1 --json out.json
    python benchmarks/bench_backends.py --ckpt model.safetensors --onnx engines/ilc-q2/onnx

For every thread count and every image, each backend compresses and decompresses the same
image in turn (interleaved, so background load hits every backend alike), after one warm-up
call per backend. Each call's time is split as the pipeline's Stats records it: 'transform'
(the backend's graphs), 'entropy' (integer scale network + rANS coding, the same code on every
backend) and the rest (container, padding, rounding). Reported per backend and thread count:

- seconds per image for compress and decompress, and their transform / entropy parts;
- speed-up vs torch at the same thread count (compress, decompress, end to end = both);
- the entropy coder's share of the wall time;
- achieved GFLOP/s of the transforms (FLOPs counted from the ONNX graphs, benchmarks/flops.py)
  and that as a percentage of this machine's peak, measured as a 2048^3 float32 numpy matmul
  with the same thread count (threadpoolctl when installed, else a subprocess with
  OPENBLAS/OMP/MKL_NUM_THREADS set), best of 5 runs, before and after each round.
  torch.mm's peak is shown too (torch's own BLAS).

The checkpoint is never modified: if it lacks codec tables, a copy in a temp folder is
finalized (ilc_export.export.tables_build.finalize_checkpoint) and exported to ONNX there.
Timings are only comparable within one run (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "kodak"
SAMPLE = ROOT / "ilc_export" / "data" / "kodim23.png"
sys.path.insert(0, str(HERE))

import flops as flops_mod


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """GFLOP/s of the best of `repeat` n^3 float32 numpy matmuls (after one warm-up)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


_PEAK_CODE = "import sys; sys.path.insert(0, {here!r}); from bench_backends import matmul_gflops; print(matmul_gflops({n}, {r}))"


def matmul_peak(threads: int, n: int = 2048, repeat: int = 5) -> tuple[float, str]:
    """(GFLOP/s of an n^3 float32 numpy matmul with `threads` BLAS threads, method)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        # BLAS reads its thread count at import: measure in a fresh interpreter
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        code = _PEAK_CODE.format(here=str(HERE), n=n, r=repeat)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1]), "subprocess, OPENBLAS/OMP/MKL_NUM_THREADS (no threadpoolctl)"
    with threadpool_limits(limits=threads):
        return matmul_gflops(n, repeat), "threadpoolctl"


def torch_matmul_peak(threads: int, n: int = 2048, repeat: int = 3) -> float | None:
    """GFLOP/s of an n^3 float32 torch.mm (torch's own BLAS), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return 2.0 * n**3 / best / 1e9


def _blas_limit(threads: int):
    """Limit numpy's BLAS (used by the integer scale net) to `threads` when threadpoolctl is here."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__}
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    for mod in ("torch", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


# timing ------------------------------------------------------------------------
def _images(folder: Path | None, limit: int | None) -> list[tuple[str, np.ndarray]]:
    from ilc_export.pipeline.image_io import IMAGE_SUFFIXES, load_rgb

    if folder is None:
        folder = DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() else None
    paths = [SAMPLE] if folder is None else sorted(
        p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images in {folder}")
    if limit:
        paths = paths[:limit]
    return [(p.name, load_rgb(p)[0]) for p in paths]


def _one(codec, img: np.ndarray) -> dict:
    t0 = time.perf_counter()
    data, st_e = codec.compress(img)
    t1 = time.perf_counter()
    out, st_d = codec.decompress(data)
    t2 = time.perf_counter()
    mse = float(np.mean((out.astype(np.float64) - img.astype(np.float64)) ** 2))
    return {
        "enc_s": t1 - t0, "enc_transform_s": st_e.times.get("transform", 0.0), "enc_entropy_s": st_e.times.get("entropy", 0.0),
        "dec_s": t2 - t1, "dec_transform_s": st_d.times.get("transform", 0.0), "dec_entropy_s": st_d.times.get("entropy", 0.0),
        "bytes": len(data), "bpp": st_e.bpp, "psnr": 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf"),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _sources(backends, ckpt, onnx_dir, engines):
    src = {}
    for b in backends:
        if b == "torch":
            src[b] = ckpt
        elif b == "onnxruntime":
            src[b] = onnx_dir
        elif b == "tensorrt":
            if engines is None:
                raise SystemExit("the tensorrt backend needs --engines DIR (an `ilc-export trt` folder)")
            src[b] = engines
        else:
            raise SystemExit(f"unknown backend {b!r}")
    return src


def run_bench(ckpt: Path, onnx_dir: Path, images, backends: list[str], threads: list[int], repeat: int = 1,
              engines: Path | None = None, peak_n: int = 2048, say=print) -> dict:
    from ilc_export.backends import load_backend
    from ilc_export.pipeline.codec import ImageCodec

    src = _sources(backends, ckpt, onnx_dir, engines)
    flops_cache: dict[tuple[int, int], dict] = {}

    def model_flops(h, w):
        key = flops_mod._padded(h, w)
        if key not in flops_cache:
            flops_cache[key] = flops_mod.model_flops(onnx_dir, *key)
        return flops_cache[key]

    for _, img in images:
        model_flops(*img.shape[:2])
    results = []
    peaks = {}
    for t in threads:
        say(f"threads={t}: measuring matmul peak")
        gf, method = matmul_peak(t, peak_n)
        peaks[t] = {"numpy_gflops_before": gf, "method": method, "torch_gflops": torch_matmul_peak(t, peak_n), "n": peak_n}
        with _blas_limit(t):
            codecs = {}
            for b in backends:
                runner = load_backend(b, src[b], threads=t)
                codecs[b] = ImageCodec(runner)
            if "torch" in codecs:  # torch's thread count is process-global: set it for this round
                import torch

                torch.set_num_threads(t)
            for b, c in codecs.items():  # one warm-up per backend
                _one(c, images[0][1])
            per = {b: [] for b in backends}
            for name, img in images:
                say(f"threads={t}: {name}")
                for b, c in codecs.items():
                    runs = [_one(c, img) for _ in range(repeat)]
                    best = min(runs, key=lambda r: r["enc_s"] + r["dec_s"])
                    fl = model_flops(*img.shape[:2])
                    per[b].append({"image": name, "height": img.shape[0], "width": img.shape[1],
                                   "enc_flops": fl["encode"]["flops"], "dec_flops": fl["decode"]["flops"], **best})
            # background load varies: the peak is the best of a measurement before and after the round
            peaks[t]["numpy_gflops_after"] = matmul_peak(t, peak_n)[0]
            peaks[t]["numpy_gflops"] = max(peaks[t]["numpy_gflops_before"], peaks[t]["numpy_gflops_after"])
            for b, c in codecs.items():
                results.append({"backend": b, "threads": t, "providers": getattr(c.runner, "providers", None),
                                "summary": summarize(per[b], peaks[t]["numpy_gflops"]), "images": per[b]})
                c.runner.close()
    ref = {r["threads"]: r["summary"] for r in results if r["backend"] == "torch"}
    for r in results:
        tr = ref.get(r["threads"])
        s = r["summary"]
        if tr is not None:
            s["speedup_vs_torch"] = {k: tr[k] / s[k] for k in ("enc_s", "dec_s", "e2e_s", "enc_transform_s", "dec_transform_s")}
            shas = {i["image"]: i["sha256"] for i in next(x for x in results if x["backend"] == "torch" and x["threads"] == r["threads"])["images"]}
            s["same_bitstream_as_torch"] = sum(shas[i["image"]] == i["sha256"] for i in r["images"])
    return {"peaks": {str(k): v for k, v in peaks.items()}, "results": results,
            "flops": {f"{h}x{w}": v for (h, w), v in flops_cache.items()}}


def summarize(per: list[dict], peak_gflops: float) -> dict:
    n = len(per)
    tot = {k: sum(p[k] for p in per) for k in ("enc_s", "enc_transform_s", "enc_entropy_s", "dec_s", "dec_transform_s",
                                                 "dec_entropy_s", "enc_flops", "dec_flops", "bytes")}
    s = {k: tot[k] / n for k in ("enc_s", "enc_transform_s", "enc_entropy_s", "dec_s", "dec_transform_s", "dec_entropy_s")}
    s["e2e_s"] = s["enc_s"] + s["dec_s"]
    s["enc_entropy_share"] = tot["enc_entropy_s"] / tot["enc_s"]
    s["dec_entropy_share"] = tot["dec_entropy_s"] / tot["dec_s"]
    s["e2e_entropy_share"] = (tot["enc_entropy_s"] + tot["dec_entropy_s"]) / (tot["enc_s"] + tot["dec_s"])
    s["enc_gflops"] = tot["enc_flops"] / tot["enc_transform_s"] / 1e9
    s["dec_gflops"] = tot["dec_flops"] / tot["dec_transform_s"] / 1e9
    s["enc_pct_peak"] = 100 * s["enc_gflops"] / peak_gflops
    s["dec_pct_peak"] = 100 * s["dec_gflops"] / peak_gflops
    s["mean_bpp"] = sum(p["bpp"] for p in per) / n
    s["mean_psnr"] = sum(p["psnr"] for p in per) / n
    s["images"] = n
    return s


# report ------------------------------------------------------------------------
def tables(res: dict):
    from rich.table import Table

    t1 = Table(title="seconds per image (compress = forward + hyper_mean + entropy; decompress = entropy + hyper_mean + inverse)")
    for c in ("thr", "backend", "compress", "  transf.", "  entropy", "decompress", "  transf.", "  entropy",
              "entropy share enc / dec", "speed-up vs torch enc / dec / e2e"):
        t1.add_column(c, justify="left" if c in ("thr", "backend") else "right")
    t2 = Table(title="transform throughput vs this machine's float32 matmul peak (same thread count)")
    for c in ("thr", "backend", "enc GFLOP/s", "dec GFLOP/s", "peak numpy", "peak torch", "enc % peak", "dec % peak",
              "bpp", "PSNR", "same bits as torch"):
        t2.add_column(c, justify="left" if c in ("thr", "backend") else "right")
    for r in res["results"]:
        s, t = r["summary"], r["threads"]
        sp = s.get("speedup_vs_torch")
        t1.add_row(str(t), r["backend"], f"{s['enc_s']:.3f}", f"{s['enc_transform_s']:.3f}", f"{s['enc_entropy_s']:.3f}",
                   f"{s['dec_s']:.3f}", f"{s['dec_transform_s']:.3f}", f"{s['dec_entropy_s']:.3f}",
                   f"{100 * s['enc_entropy_share']:.0f}% / {100 * s['dec_entropy_share']:.0f}%",
                   "-" if sp is None else f"{sp['enc_s']:.2f}x / {sp['dec_s']:.2f}x / {sp['e2e_s']:.2f}x")
        pk = res["peaks"][str(t)]
        t2.add_row(str(t), r["backend"], f"{s['enc_gflops']:.1f}", f"{s['dec_gflops']:.1f}", f"{pk['numpy_gflops']:.1f}",
                   "-" if pk["torch_gflops"] is None else f"{pk['torch_gflops']:.1f}",
                   f"{s['enc_pct_peak']:.0f}%", f"{s['dec_pct_peak']:.0f}%", f"{s['mean_bpp']:.3f}", f"{s['mean_psnr']:.2f}",
                   f"{s['same_bitstream_as_torch']}/{s['images']}" if "same_bitstream_as_torch" in s else "-")
    return t1, t2


def ort_verdict(res: dict, target: float = 1.5) -> list[str]:
    lines = []
    for r in res["results"]:
        sp = r["summary"].get("speedup_vs_torch")
        if r["backend"] == "onnxruntime" and sp:
            ok = "meets" if sp["e2e_s"] >= target else "MISSES"
            lines.append(f"threads={r['threads']}: ONNX Runtime vs torch end to end {sp['e2e_s']:.2f}x "
                         f"(transforms only: enc {sp['enc_transform_s']:.2f}x, dec {sp['dec_transform_s']:.2f}x); "
                         f"{ok} the >= {target}x target")
    return lines


def _csv(s: str, kind=str) -> list:
    return [kind(v.strip()) for v in s.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    from ilc_export.backends import registry

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, type=Path, help="checkpoint (.safetensors); never modified")
    ap.add_argument("--onnx", type=Path, help="ONNX export folder of the same model (default: export to a temp folder)")
    ap.add_argument("--engines", type=Path, help="TensorRT engine folder (for --backends tensorrt)")
    ap.add_argument("--calib", type=Path, help="calibration images when a copy of the checkpoint must be finalized")
    ap.add_argument("--images", type=Path, help=f"image folder (default {DEFAULT_IMAGES}, else the shipped sample)")
    ap.add_argument("--limit", type=int, help="first N images only")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--backends", default="torch,onnxruntime", help="comma-separated (default torch,onnxruntime)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per image and backend; the fastest counts (default 1)")
    ap.add_argument("--peak-size", type=int, default=2048, help="n of the n^3 matmul peak (default 2048)")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    backends = [registry.canonical(b) or b for b in _csv(args.backends)]
    threads = _csv(args.threads, int)
    from rich.console import Console

    con = Console(width=max(Console().width, 150))
    say = (lambda m: None) if args.quiet else (lambda m: con.print(f"[dim]{m}[/dim]"))
    info = machine_info()
    images = _images(args.images, args.limit)
    with tempfile.TemporaryDirectory(prefix="ilc-bench-") as tmp:
        from ilc_export.export.prepare import prepare_models

        ckpt, onnx_dir, warnings = prepare_models(args.ckpt, args.onnx, Path(tmp), args.calib, say)
        res = run_bench(ckpt, onnx_dir, images, backends, threads, args.repeat, args.engines, args.peak_size, say)
        h, w = images[0][1].shape[:2]
        fl = flops_mod.model_flops(onnx_dir, h, w)
    try:
        info["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    res = {"machine": info, "checkpoint": str(args.ckpt), "images": [n for n, _ in images],
           "backends": backends, "threads": threads, "repeat": args.repeat,
           "warnings": warnings, **res}
    con.print(flops_mod.flops_table(fl, f"MACs / FLOPs at {fl['forward']['height']}x{fl['forward']['width']}"))
    for t in tables(res):
        con.print(t)
    peak_method = next(iter(res["peaks"].values()))["method"]
    con.print(f"{info['cpu']}, {info['cores']} cores, load avg {info.get('loadavg_start')} -> {info.get('loadavg_end')}; "
              f"{len(images)} images, repeat {args.repeat}; peak: {args.peak_size}^3 float32 matmul via {peak_method}")
    res["verdict"] = ort_verdict(res)
    for line in res["verdict"]:
        con.print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        say(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
