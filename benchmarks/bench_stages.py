"""Per-stage split of one 1920x1080 frame: transforms, entropy, the rest, and
frames/s, per backend, thread count and entropy-coder implementation.

    python benchmarks/bench_stages.py --onnx engines/ilc-q2/onnx            # ORT, 1 thread, both coders
    python benchmarks/bench_stages.py --ckpt CKPT --backends onnxruntime,torch --threads 1,2 \
        --repeat 5 --json docs/results/bench_stages.json

The stage times are the pipeline's own (`Stats.times` of compress and decompress):
`transform` = the backend's graphs (compress: forward + hyper_mean; decompress: hyper_mean +
inverse), `entropy` = integer scale net + range coding + their checks, the rest = wall
clock minus both (container, padding, tiling, rounding). With the default 1024-px tiles a
1920x1080 frame is 2 x 2 tiles. Per setting, after a warm-up, each repeat compresses and
decompresses the frame once with every coder in turn (interleaved, so load hits all alike);
the table shows medians over repeats and `entropy / transform` = (entropy enc + dec) /
(transform enc + dec) of the same runs. The coders' files are checked to be identical.

Thread counts apply to the backend (ONNX Runtime intra-op threads, torch threads); the
integer scale net uses $ILC_ENTROPY_BLAS_THREADS OpenBLAS threads (default 1), the range
coder one thread per stream.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "ilc_export" / "data" / "kodim23.png"


def frame(size: tuple[int, int], image: Path | None) -> np.ndarray:
    from PIL import Image

    w, h = size
    img = Image.open(image or SAMPLE).convert("RGB")
    return np.asarray(img.resize((w, h), Image.BICUBIC))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, help="checkpoint (default: the shipped ilc-q2); needed by --backends torch")
    ap.add_argument("--onnx", type=Path, help="ONNX export folder (default: export --ckpt to a temp folder)")
    ap.add_argument("--backends", default="onnxruntime")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--coders", default="", help="comma-separated (default: every available one)")
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--image", type=Path, help="image resized to --size (default: the shipped kodim23)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from ilc_export.backends import load_backend
    from ilc_export.codec.entropy import EntropyCodec, available_coders
    from ilc_export.pipeline.codec import ImageCodec
    from ilc_export.pipeline.models import shipped_checkpoint

    backends = [b for b in args.backends.split(",") if b]
    threads = [int(t) for t in args.threads.split(",") if t]
    coders = [c for c in args.coders.split(",") if c] or available_coders()
    w, h = (int(x) for x in args.size.lower().split("x"))
    img = frame((w, h), args.image)
    ckpt = args.ckpt or shipped_checkpoint()
    tmp = tempfile.TemporaryDirectory(prefix="ilc-stages-")
    onnx_dir = args.onnx
    if "onnxruntime" in backends and onnx_dir is None:
        from ilc_export.export.onnx_export import export_onnx

        print(f"exporting {ckpt} to ONNX ...", flush=True)
        onnx_dir = export_onnx(ckpt, Path(tmp.name) / "onnx")
    results = []
    for backend in backends:
        for th in threads:
            src = onnx_dir if backend == "onnxruntime" else ckpt
            codec = ImageCodec(load_backend(backend, Path(src), threads=th))
            impl = {c: EntropyCodec(codec.tables, coder=c) for c in coders}
            runs = {c: [] for c in coders}
            files = {}
            for rep in range(args.repeat + 1):  # the first round is a warm-up
                for c in coders:
                    codec.entropy = impl[c]
                    t0 = time.perf_counter()
                    data, se = codec.compress(img)
                    t1 = time.perf_counter()
                    _, sd = codec.decompress(data)
                    t2 = time.perf_counter()
                    files[c] = data
                    if rep:
                        runs[c].append({"enc_wall": t1 - t0, "dec_wall": t2 - t1,
                                        "enc": dict(se.times), "dec": dict(sd.times)})
            same = len({files[c] for c in coders}) == 1
            for c in coders:
                rs = runs[c]

                def med(f, rs=rs):
                    return statistics.median(f(r) for r in rs)

                row = {
                    "backend": backend, "threads": th, "coder": c, "size": f"{w}x{h}", "bytes": len(files[c]),
                    "enc_transform_ms": 1e3 * med(lambda r: r["enc"].get("transform", 0.0)),
                    "enc_entropy_ms": 1e3 * med(lambda r: r["enc"].get("entropy", 0.0)),
                    "enc_rest_ms": 1e3 * med(lambda r: r["enc_wall"] - r["enc"].get("transform", 0.0) - r["enc"].get("entropy", 0.0)),
                    "dec_transform_ms": 1e3 * med(lambda r: r["dec"].get("transform", 0.0)),
                    "dec_entropy_ms": 1e3 * med(lambda r: r["dec"].get("entropy", 0.0)),
                    "dec_rest_ms": 1e3 * med(lambda r: r["dec_wall"] - r["dec"].get("transform", 0.0) - r["dec"].get("entropy", 0.0)),
                    "fps_enc": 1.0 / med(lambda r: r["enc_wall"]), "fps_dec": 1.0 / med(lambda r: r["dec_wall"]),
                    "fps_enc_plus_dec": 1.0 / med(lambda r: r["enc_wall"] + r["dec_wall"]),
                    "entropy_over_transform": med(lambda r: (r["enc"].get("entropy", 0.0) + r["dec"].get("entropy", 0.0))
                                                  / (r["enc"].get("transform", 0.0) + r["dec"].get("transform", 0.0))),
                    "identical_files_across_coders": same, "runs": rs,
                }
                results.append(row)
                print(f"{backend:11s} threads {th} coder {c:12s} | compress: transform {row['enc_transform_ms']:7.0f} ms  "
                      f"entropy {row['enc_entropy_ms']:6.1f}  rest {row['enc_rest_ms']:5.1f} | decompress: transform "
                      f"{row['dec_transform_ms']:7.0f}  entropy {row['dec_entropy_ms']:6.1f}  rest {row['dec_rest_ms']:5.1f} | "
                      f"{row['fps_enc_plus_dec']:.3f} frames/s (enc+dec) | entropy/transform "
                      f"{100 * row['entropy_over_transform']:.2f} %", flush=True)
            if not same:
                print("WARNING: the coders wrote different files", file=sys.stderr)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "loadavg_after": load,
                       "python": platform.python_version(),
                       "entropy_blas_threads": os.environ.get("ILC_ENTROPY_BLAS_THREADS", "1")},
           "repeat": args.repeat, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
