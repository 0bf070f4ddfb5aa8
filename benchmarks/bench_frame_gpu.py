"""One video-sized frame (default 1920x1080) round trip through the library API, torch backend,
per device / precision / coding path: frames/s and the per-stage split from ``Stats.times``.

Written for a GPU window (``--device cuda``, fp32 and fp16); it runs unchanged on the CPU
(``--device cpu``, fp32 only) so it is tested where no GPU exists.

    python benchmarks/bench_frame_gpu.py --device cuda --precision fp32,fp16 --frames 20 --json gpu.json
    python benchmarks/bench_frame_gpu.py --device cpu --size 256x256 --frames 2      # dry run

Paths: ``fused`` = the device-resident path (FUSED_TILES: latents stay on the device, only
w and the symbols cross), ``host`` = every graph's outputs copied back to numpy between graphs
(the path before FUSED_TILES). Stages (milliseconds per frame, mean over the timed frames):
``transform`` = the graphs, pixel conversion (fused torch: on the device) and, fused, the
symbol rounding on the device, ``entropy`` =
integer scale network + rANS, ``rest`` = wall time minus both (padding, tiling, quantizing
on the host, container). Every file is decoded again on the CPU (fp32) when the device is not
the CPU: the bitstream contract says it must decode there, so a failure is a bug, not noise.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def frame(width: int, height: int, image: Path | None) -> np.ndarray:
    """A natural-looking test frame: the image (default: the shipped Kodak sample) resized."""
    from PIL import Image

    src = image or ROOT / "ilc_export" / "data" / "kodim23.png"
    return np.asarray(Image.open(src).convert("RGB").resize((width, height), Image.Resampling.BICUBIC))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench(ckpt: Path, device: str, precision: str, fused: bool, img: np.ndarray, frames: int, warmup: int,
          tile: int | None, cpu_check) -> dict:
    from ilc_export.backends import load_backend
    from ilc_export.pipeline.codec import ImageCodec
    from ilc_export.pipeline.metrics import psnr

    runner = load_backend("torch", ckpt, device=device, precision=precision)
    codec = ImageCodec(runner, fused=fused)
    stages = {"compress": [], "decompress": []}
    data = rec = None
    for i in range(warmup + frames):
        _sync(device)
        t0 = time.perf_counter()
        data, est = codec.compress(img, tile=tile)
        t1 = time.perf_counter()
        rec, dst = codec.decompress(data)
        t2 = time.perf_counter()
        if i < warmup:
            continue
        for key, st, wall in (("compress", est, t1 - t0), ("decompress", dst, t2 - t1)):
            tr, en = st.times.get("transform", 0.0), st.times.get("entropy", 0.0)
            stages[key].append({"wall": wall, "transform": tr, "entropy": en, "rest": wall - tr - en})
    ms = {k: {s: 1000 * float(np.mean([r[s] for r in rows])) for s in rows[0]} for k, rows in stages.items()}
    rt = (ms["compress"]["wall"] + ms["decompress"]["wall"]) / 1000
    row = {
        "device": runner.device, "precision": precision, "path": "fused" if fused else "host",
        "frames": frames, "ms": ms,
        "fps_round_trip": 1 / rt, "fps_compress": 1000 / ms["compress"]["wall"],
        "fps_decompress": 1000 / ms["decompress"]["wall"],
        "transform_ms_round_trip": ms["compress"]["transform"] + ms["decompress"]["transform"],
        "bytes": len(data), "bpp": 8 * len(data) / (img.shape[0] * img.shape[1]), "psnr": psnr(img, rec),
    }
    if cpu_check is not None:
        rec_cpu = cpu_check.decompress(data)[0]
        row["cpu_decode_psnr"] = psnr(img, rec_cpu)
        row["cpu_vs_device_max_abs"] = int(np.abs(rec_cpu.astype(int) - rec.astype(int)).max())
    runner.close()
    return row


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return env


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, help="checkpoint (default: the shipped ilc-q2)")
    ap.add_argument("--device", default="cuda", help="cpu | cuda | cuda:N")
    ap.add_argument("--precision", default="fp32,fp16", help="comma list; fp16 is skipped on the CPU")
    ap.add_argument("--paths", default="fused,host", help="comma list of fused, host")
    ap.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT")
    ap.add_argument("--image", type=Path, help="source image, resized to --size (default: the Kodak sample)")
    ap.add_argument("--frames", type=int, default=10, help="timed frames per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed frames first (cudnn autotuning, allocator)")
    ap.add_argument("--tile", type=int, default=None, help="largest tile side (default: the library's 1024; 0: one tile)")
    ap.add_argument("--no-cpu-check", action="store_true", help="skip decoding each device file on the CPU")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)

    from ilc_export.backends import BackendError, load_backend
    from ilc_export.backends.pytorch.loader import resolve_device
    from ilc_export.pipeline.codec import ImageCodec
    from ilc_export.pipeline.models import shipped_checkpoint

    try:
        device = str(resolve_device(a.device))
    except BackendError as e:
        sys.exit(f"error: {e}")
    ckpt = a.ckpt or shipped_checkpoint(2)
    w, h = (int(v) for v in a.size.lower().split("x"))
    img = frame(w, h, a.image)
    precisions = [p.strip() for p in a.precision.split(",") if p.strip()]
    if device == "cpu" and "fp16" in precisions:
        print("note: fp16 needs a CUDA device; measuring fp32 only", file=sys.stderr)
        precisions = [p for p in precisions if p != "fp16"] or ["fp32"]
    cpu_check = None
    if device != "cpu" and not a.no_cpu_check:
        cpu_check = ImageCodec(load_backend("torch", ckpt, device="cpu"))
    rows = []
    for prec in precisions:
        for path in [p.strip() for p in a.paths.split(",") if p.strip()]:
            r = bench(ckpt, device, prec, path == "fused", img, a.frames, a.warmup, a.tile, cpu_check)
            rows.append(r)
            c, d = r["ms"]["compress"], r["ms"]["decompress"]
            extra = f"  CPU decode PSNR {r['cpu_decode_psnr']:.2f} dB" if "cpu_decode_psnr" in r else ""
            print(f"{r['device']:>8s} {prec} {r['path']:5s}  {r['fps_round_trip']:6.2f} frames/s  "
                  f"compress {c['wall']:7.1f} ms (transform {c['transform']:.1f}, entropy {c['entropy']:.1f}, "
                  f"rest {c['rest']:.1f})  decompress {d['wall']:7.1f} ms (transform {d['transform']:.1f}, "
                  f"entropy {d['entropy']:.1f}, rest {d['rest']:.1f})  {r['bpp']:.4f} bpp  PSNR {r['psnr']:.2f} dB"
                  + extra, flush=True)
    res = {"benchmark": "bench_frame_gpu", "checkpoint": str(ckpt), "size": [w, h], "tile": a.tile,
           "warmup": a.warmup, "environment": environment(device), "results": rows}
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
