"""Entropy-coder throughput of every implementation (the C extension "c" and
"constriction"): M symbols/s for encode and decode of y (and w), plus the integer scale
network's time (fast float32 path and the all-float64 reference path), on this machine.

    python benchmarks/bench_entropy.py                 # tiny random model, ~8 M symbols
    python benchmarks/bench_entropy.py --config default   # default-size random model
    python benchmarks/bench_entropy.py --ckpt model.safetensors --symbols 20e6 --coders c,constriction

Symbols are drawn from the Gaussian each element's scale index selects, so the mix of
tables and the escape rate are realistic. Single-threaded numpy/BLAS by default. Both
coders' streams are checked to be identical.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np


def _tables(ckpt: str | None, config: str):
    from ilc_export.codec.tables import CodecTables

    if ckpt:
        return CodecTables.load(ckpt)
    import torch
    from ilc_reference.config import ModelConfig, tiny_config
    from ilc_reference.model import build_model

    from ilc_export.export.tables_build import build_tables

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = tiny_config() if config == "tiny" else ModelConfig()
    return CodecTables.from_tensors(build_tables(build_model(cfg).eval()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="checkpoint with codec tables (default: tiny random model)")
    ap.add_argument("--config", choices=["tiny", "default"], default="tiny",
                    help="random model size when no --ckpt is given (tiny: M=16, default: M=96)")
    ap.add_argument("--symbols", type=float, default=8e6, help="number of y symbols (approx.)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--coders", default="", help="comma-separated (default: every available one)")
    args = ap.parse_args()

    from ilc_export.codec import intnet
    from ilc_export.codec.entropy import EntropyCodec, available_coders

    tab = _tables(args.ckpt, args.config)
    coders = [c for c in args.coders.split(",") if c] or available_coders()
    codec = EntropyCodec(tab, coder=coders[0])
    m, nh = tab.latent_channels, tab.hyper_channels
    side = max(1, int(round((args.symbols / m) ** 0.5 / 4)))
    rng = np.random.default_rng(0)
    w_hat = np.stack([int(tab.prior_lo[c]) + rng.choice(int(tab.prior_len[c]), size=(side, side),
                                                         p=tab.prior_pmf(c) / 2.0**tab.precision)
                      for c in range(nh)]).astype(np.int32)
    idx = intnet.scale_indices(tab, w_hat)
    sigma = np.exp(np.linspace(np.log(0.11), np.log(64.0), tab.num_scales))
    y = np.round(rng.normal(0.0, sigma[idx])).astype(np.int32)
    n = y.size

    def timed(fn):
        """(best wall s, best CPU s of this process) over args.repeat runs."""
        walls, cpus = [], []
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            res = fn()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        return min(walls), min(cpus), res

    net_w, net_c, _ = timed(lambda: intnet.scale_indices(tab, w_hat))
    net64_w, net64_c, idx64 = timed(lambda: intnet.scale_indices(tab, w_hat, exact_f64=True))
    assert (idx64 == idx).all(), "fast and float64 scale nets disagree"
    print(f"tables: M={m} Nh={nh} scales={tab.num_scales}; y {y.shape} = {n / 1e6:.2f} M symbols, "
          f"w {w_hat.shape}; escapes {(np.abs(y) > tab.gauss_radius[idx]).mean():.2e}")
    print(f"integer scale net ({n / 1e6:.2f} M indices, wall | CPU ms): fast (float32 BLAS + bound) "
          f"{net_w * 1e3:.1f} | {net_c * 1e3:.1f}; all-float64 {net64_w * 1e3:.1f} | {net64_c * 1e3:.1f}")
    print("M symbols/s (wall clock | per CPU-second of this process):")
    first = None
    for name in coders:
        codec = EntropyCodec(tab, coder=name)
        enc_w, enc_c, streams = timed(lambda: codec.encode(w_hat, y, idx))
        dec_w, dec_c, (w2, y2) = timed(lambda: codec.decode(streams, w_hat.shape, y.shape))
        assert (w2 == w_hat).all() and (y2 == y).all(), "round trip failed"
        ey_w, ey_c, _ = timed(lambda: codec.encode_y(y, idx))
        dy_w, dy_c, _ = timed(lambda: codec.decode_y(streams[1], idx))
        if first is None:
            first = streams
        assert streams == first, f"{name} wrote different streams from {coders[0]}"
        bits = 8 * sum(len(s) for s in streams)
        print(f" [{name}] {bits / n:.3f} bits/symbol")
        for label, w_, c_ in [("encode w+y (indices given)", enc_w, enc_c), ("encode y only", ey_w, ey_c),
                              ("decode w+net+y", dec_w, dec_c), ("decode y only", dy_w, dy_c)]:
            print(f"  {label:28s} {n / w_ / 1e6:6.1f} | {n / max(c_, 1e-9) / 1e6:6.1f}")
    if len(coders) > 1:
        print(f"identical streams from {', '.join(coders)}: yes")


if __name__ == "__main__":
    main()
