"""What tiling buys and costs: peak memory for big images, bpp/PSNR for small tiles.

    python benchmarks/bench_tiling.py memory                        # tiny model, 1024^2 and 4096^2
    python benchmarks/bench_tiling.py memory --sizes 1024,4096 --untiled
    python benchmarks/bench_tiling.py cost --model /tmp/ilc_q2.safetensors --images 4 --tiles 0,384,256,128

memory: each configuration runs compress + decompress in a fresh subprocess (torch, one
thread) and reports ru_maxrss before the image exists (after imports and model load), the
peak after, their difference (what coding the image cost), and the tracemalloc peak
(numpy-side allocations; torch's own buffers are not traced). The image is a smooth
synthetic picture of the requested size.

cost: bpp (file size, header included) and PSNR of the same Kodak images coded untiled and
with each tile size (balanced tiles, ilc_export.pipeline.tiling).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic(size: int) -> np.ndarray:
    """A smooth size x size RGB picture (gradients + low-frequency waves)."""
    out = np.empty((size, size, 3), np.uint8)
    x = np.arange(size, dtype=np.float32)[None, :] / size
    for r0 in range(0, size, 256):  # in row blocks: no image-sized float temporaries
        y = np.arange(r0, min(size, r0 + 256), dtype=np.float32)[:, None] / size
        for c, (fx, fy) in enumerate(((3, 5), (7, 2), (4, 9))):
            v = 127 + 60 * np.sin(2 * np.pi * (fx * x + fy * y)) + 60 * (x - y)
            out[r0:r0 + y.shape[0], :, c] = np.clip(v, 0, 255).astype(np.uint8)
    return out


def measure_child(model: str, size: int, tile: int) -> dict:
    """Runs inside the subprocess."""
    import tracemalloc

    import torch

    torch.set_num_threads(1)
    from ilc_export.pipeline.api import open_codec

    codec = open_codec(model)
    codec.compress(np.zeros((64, 64, 3), np.uint8))  # warm up: lazy initialisation out of the numbers
    base = _maxrss_mib()
    img = synthetic(size)
    tracemalloc.start()
    t0 = time.perf_counter()
    data, st = codec.compress(img, tile=tile)
    t1 = time.perf_counter()
    rec, _ = codec.decompress(data, max_pixels=None)
    t2 = time.perf_counter()
    peak_traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rec.shape == img.shape
    from ilc_export.codec.bitstream import unpack

    return {"size": size, "tile": tile, "tiles": unpack(data)[0].num_tiles, "rss_base_mib": base,
            "rss_peak_mib": _maxrss_mib(), "rss_delta_mib": _maxrss_mib() - base,
            "tracemalloc_peak_mib": peak_traced / 2**20, "image_mib": img.nbytes / 2**20,
            "encode_s": t1 - t0, "decode_s": t2 - t1, "bytes": len(data)}


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fuzz_decoder import tiny_model as make

    return make(folder)


def memory(args) -> list[dict]:
    tmp = tempfile.TemporaryDirectory(prefix="ilc-bench-tiling-")
    model = args.model or tiny_model(Path(tmp.name))
    configs = [(s, args.tile) for s in args.sizes]
    if args.untiled:
        configs += [(s, 0) for s in args.sizes if s > args.tile]
    rows = []
    for size, tile in configs:
        cmd = [sys.executable, __file__, "_child", "--model", str(model), "--size", str(size), "--tile", str(tile)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{size}x{size} tile {tile or 'none'} ({row['tiles']} tiles): RSS {row['rss_base_mib']:.0f} -> "
              f"{row['rss_peak_mib']:.0f} MiB (+{row['rss_delta_mib']:.0f}); tracemalloc peak "
              f"{row['tracemalloc_peak_mib']:.0f} MiB (the image itself: {row['image_mib']:.0f} MiB); "
              f"enc {row['encode_s']:.1f} s, dec {row['decode_s']:.1f} s", flush=True)
    return rows


def cost(args) -> list[dict]:
    from ilc_export.pipeline.api import open_codec
    from ilc_export.pipeline.image_io import load_rgb
    from ilc_export.pipeline.metrics import psnr

    import torch

    torch.set_num_threads(args.threads)
    codec = open_codec(args.model)
    images = sorted(Path(args.kodak).glob("*.png"))[: args.images]
    rows = []
    for tile in args.tiles:
        bpp, ps = [], []
        for p in images:
            img, _ = load_rgb(p)
            data, _ = codec.compress(img, tile=tile)
            rec, _ = codec.decompress(data)
            bpp.append(8 * len(data) / (img.shape[0] * img.shape[1]))
            ps.append(psnr(img, rec))
        rows.append({"tile": tile, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(ps)), "images": len(images)})
    base = rows[0]
    for r in rows:
        r["bpp_change_pct"] = 100 * (r["bpp"] / base["bpp"] - 1)
        r["psnr_change_db"] = r["psnr"] - base["psnr"]
        print(f"tile {r['tile'] or 'none':>4}: {r['bpp']:.4f} bpp ({r['bpp_change_pct']:+.1f}%), "
              f"PSNR {r['psnr']:.2f} dB ({r['psnr_change_db']:+.2f})  [{r['images']} Kodak images]", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--model", help="finalised checkpoint (default: tiny random model)")
    m.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 4096])
    m.add_argument("--tile", type=int, default=1024)
    m.add_argument("--untiled", action="store_true", help="also the larger sizes without tiling")
    m.add_argument("--json", type=Path)
    c = sub.add_parser("cost")
    c.add_argument("--model", required=True, help="finalised checkpoint (a trained one: the cost is about real RD)")
    c.add_argument("--kodak", default=str(KODAK))
    c.add_argument("--images", type=int, default=4)
    c.add_argument("--tiles", type=lambda s: [int(x) for x in s.split(",")], default=[0, 384, 256, 128])
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--json", type=Path)
    ch = sub.add_parser("_child")
    ch.add_argument("--model", required=True)
    ch.add_argument("--size", type=int, required=True)
    ch.add_argument("--tile", type=int, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "_child":
        print(json.dumps(measure_child(args.model, args.size, args.tile)))
        return 0
    rows = memory(args) if args.cmd == "memory" else cost(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
