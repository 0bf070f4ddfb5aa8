"""Conformance table of the two entropy-coder implementations on real files.

For every shipped model (the checkpoints in ilc_reference/checkpoints, found through the
pipeline's model lookup) and every image of a folder (default ../shared/data/kodak):
compress with each coder ("c": the C extension, "constriction") from the same latents
(one forward pass), compare the files byte for byte, then decode every file with every
coder and compare the pixels.

    python scripts/coder_conformance.py [--images DIR] [--limit N] [--backend torch] \
        [--json docs/results/coder_conformance.json]

Prints a table: model x direction (encode: identical files; decode: each coder reading
the other's file gives the same pixels as reading its own).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from PIL import Image

    from ilc_export.codec.entropy import EntropyCodec, available_coders
    from ilc_export.pipeline.api import open_codec
    from ilc_export.pipeline.models import shipped_checkpoints

    coders = available_coders()
    if set(coders) != {"c", "constriction"}:
        print(f"need both coders, have {coders}", file=sys.stderr)
        return 2
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if args.limit:
        images = images[: args.limit]
    rows, t0 = [], time.perf_counter()
    for ckpt in shipped_checkpoints():
        codec = open_codec(ckpt, backend=args.backend, threads=1) if args.backend == "torch" else open_codec(ckpt, backend=args.backend)
        impl = {c: EntropyCodec(codec.tables, coder=c) for c in coders}
        for path in images:
            img = np.asarray(Image.open(path).convert("RGB"))
            header = codec.plan(img)
            symbols = list(codec.encode_tiles(img, header))  # one forward pass for both coders
            files = {}
            for c in coders:
                codec.entropy = impl[c]
                files[c] = codec.write(header, symbols)
            same_bytes = files["c"] == files["constriction"]
            pix = {}
            for dec in coders:
                codec.entropy = impl[dec]
                for enc in coders:
                    if enc == dec or not same_bytes:
                        pix[(dec, enc)] = codec.decompress(files[enc])[0]
            if same_bytes:  # one file: each coder decodes it (the other coder's file, byte for byte)
                same_pixels = bool((pix[("c", "c")] == pix[("constriction", "constriction")]).all())
            else:
                same_pixels = all((pix[(d, e)] == pix[(e, e)]).all() for d in coders for e in coders)
            rows.append({"model": ckpt.stem, "image": path.stem, "bytes": len(files["c"]),
                         "identical_bytes": same_bytes, "identical_pixels": same_pixels})
            print(f"{ckpt.stem:12s} {path.stem:8s} {len(files['c']):7d} B  identical bytes {same_bytes}  "
                  f"identical pixels {same_pixels}", flush=True)
    print()
    print("| model | images | encode: C vs constriction, identical files | decode: C reads constriction's files / constriction reads C's, identical pixels |")
    print("|---|---|---|---|")
    summary = {}
    for m in sorted({r["model"] for r in rows}):
        rs = [r for r in rows if r["model"] == m]
        nb = sum(r["identical_bytes"] for r in rs)
        npx = sum(r["identical_pixels"] for r in rs)
        summary[m] = {"images": len(rs), "identical_bytes": nb, "identical_pixels": npx}
        print(f"| {m} | {len(rs)} | {nb}/{len(rs)} | {npx}/{len(rs)} |")
    ok = all(r["identical_bytes"] and r["identical_pixels"] for r in rows)
    print(f"\nall identical: {ok}  ({time.perf_counter() - t0:.0f} s)")
    if args.json:
        import platform

        import constriction

        args.json.write_text(json.dumps({
            "machine": platform.machine(), "python": platform.python_version(),
            "constriction": constriction.__version__ if hasattr(constriction, "__version__") else "?",
            "backend": args.backend, "summary": summary, "rows": rows, "all_identical": ok}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
