"""Write the entries of tests/data/entropy_golden.npz for some shipped models: each tile's
symbols and its two entropy-coded streams, taken from real files.

    python scripts/entropy_golden.py ilc-q1 ilc-q2 ilc-q3     # replaces those models' entries

The file guards the entropy coder byte for byte (tests/test_codec_fastpath.py): entries of
models not named are kept as they are. Re-run it for a model whose tables change (a new
checkpoint), with a coder that passes the existing entries.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "entropy_golden.npz"
KODAK = ROOT.parent / "shared" / "data" / "kodak"
#: crop name -> (image, rows, cols, tile); kodim23 (6 tiles of 128) only for ilc-q2
CROPS = {"kodim01": ("kodim01.png", 192, 256, 0), "kodim15": ("kodim15.png", 64, 64, 0),
         "kodim23": ("kodim23.png", 256, 384, 128)}


def entries(model: str) -> dict[str, np.ndarray]:
    from ilc_export.pipeline.api import open_codec
    from ilc_export.pipeline.image_io import load_rgb

    codec = open_codec(model, backend="torch")
    out = {}
    for crop, (name, h, w, tile) in CROPS.items():
        if crop == "kodim23" and model != "ilc-q2":
            continue
        img = np.ascontiguousarray(load_rgb(KODAK / name)[0][:h, :w])
        dec = codec.open_file(codec.compress(img, tile=tile or None)[0], max_pixels=None)
        for t in dec.tiles:
            s0, s1 = dec.tile_streams(t.index)
            wh, yh = codec.decode_symbols([s0, s1], dec.shapes[t.index])
            key = f"{model}/{crop}/{t.index}"
            out.update({f"{key}/w": wh.astype(np.int8), f"{key}/y": yh.astype(np.int16),
                        f"{key}/s0": np.frombuffer(s0, np.uint8), f"{key}/s1": np.frombuffer(s1, np.uint8)})
    return out


def main():
    from ilc_export.contract.files import write_atomic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    old = dict(np.load(GOLDEN)) if GOLDEN.exists() else {}
    new = {k: v for k, v in old.items() if k.split("/")[0] not in a.models}
    for m in a.models:
        e = entries(m)
        new.update(e)
        print(f"{m}: {len({k.rsplit('/', 1)[0] for k in e})} tiles")
    buf = io.BytesIO()
    np.savez_compressed(buf, **new)
    write_atomic(GOLDEN, buf.getvalue())


if __name__ == "__main__":
    main()
