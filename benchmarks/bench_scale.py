"""Throughput of a batch on the local engine vs Ray with 1, 2, ... workers (same bytes).

    python benchmarks/bench_scale.py                                  # Kodak, shipped q2, torch, 1 thread
    python benchmarks/bench_scale.py --limit 8 --workers 1,2 --local-jobs 1,2 --json scale.json
    python benchmarks/bench_scale.py --address ray://head:10001       # an existing cluster

Each configuration compresses the same images with the same model, backend and thread
count into its own folder; the Ray outputs are checked byte for byte against the local
engine's. One Ray is started (or joined) for all Ray rows; each row starts fresh actors, so
its "start-up" is what a CLI run pays on top of Ray itself (process start, imports, model
load), and Ray's own start is reported once. images/s counts the whole batch, start-up
included; "after start-up" leaves it out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=KODAK)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: shipped --quality)")
    ap.add_argument("--quality", type=int, default=2)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per worker (and for local)")
    ap.add_argument("--workers", default="1,2", help="comma list of Ray worker counts")
    ap.add_argument("--local-jobs", default="1", help="comma list of local -j values")
    ap.add_argument("--address", default=None, help="Ray cluster to join (default: start a local Ray)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)

    from ilc_export.pipeline.api import IMAGE_SUFFIXES, expand_inputs
    from ilc_export.scale import Item, Job, LocalEngine, run_batch

    if not a.images.is_dir():
        sys.exit(f"{a.images}: not a folder of images (--images DIR)")
    files = expand_inputs([a.images], IMAGE_SUFFIXES)[: a.limit]
    if not files:
        sys.exit(f"no images in {a.images}")
    job = Job("compress", backend=a.backend, model=str(a.model) if a.model else None, quality=a.quality,
              options={"threads": a.threads})
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        def run(engine, label):
            out = Path(tmp) / label
            out.mkdir()
            b = run_batch(engine, job, [Item(f, out / (f.stem + ".ilc")) for f in files])
            s = b.summary
            row = {"engine": s.engine, "config": label, "workers": s.workers, "images": s.images, "failed": len(s.failures),
                   "seconds": s.seconds, "startup_s": s.startup_seconds, "images_per_s": s.images_per_s,
                   "images_per_s_after_startup": s.images_per_s_after_startup, "mb_per_s": s.mb_per_s,
                   "load_avg_1min": os.getloadavg()[0]}
            rows.append(row)
            print(f"{label:>12}: {s.line()}  (load avg {row['load_avg_1min']:.1f})", flush=True)
            return out

        ref = None

        def compare(out):
            """Every row's outputs against the first local row's, byte for byte."""
            if ref is None or out == ref:
                return
            names = sorted(p.name for p in ref.iterdir())
            same = bool(names) and names == sorted(p.name for p in out.iterdir()) and all(
                (out / n).read_bytes() == (ref / n).read_bytes() for n in names)
            rows[-1]["bytes_equal_local"] = same
            print(f"{'':>12}  outputs byte-identical to {ref.name}: {same}", flush=True)

        for j in [int(x) for x in a.local_jobs.split(",") if x]:
            out = run(LocalEngine(j), f"local -j{j}")
            ref = ref or out
            compare(out)
        ray_start = None
        worker_counts = [int(x) for x in a.workers.split(",") if x]
        if worker_counts:
            import ray

            from ilc_export.scale.ray_engine import RayEngine

            t0 = time.perf_counter()
            ray.init(address=a.address or "local", include_dashboard=False, logging_level="WARNING",
                     log_to_driver=False)
            ray_start = time.perf_counter() - t0
            print(f"ray.init: {ray_start:.1f} s; cluster {ray.cluster_resources()}", flush=True)
            try:
                for n in worker_counts:
                    with RayEngine(workers=n) as eng:
                        compare(run(eng, f"ray {n}w"))
            finally:
                ray.shutdown()
    result = {"images": str(a.images), "n_images": len(files), "backend": a.backend, "threads": a.threads,
              "model": str(a.model) if a.model else f"shipped ilc-q{a.quality}", "ray_init_s": ray_start,
              "cpus": os.cpu_count(), "machine": platform.platform(), "rows": rows}
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
