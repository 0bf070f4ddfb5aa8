"""Fuzz the decoder: every hostile file must give a BitstreamError, never a crash, a hang,
unbounded memory or a silently wrong image.

    python benchmarks/fuzz_decoder.py --cases 10000            # tiny random model, seed 0
    python benchmarks/fuzz_decoder.py --cases 2000 --seed 3 --model ckpt.safetensors --json out.json
    python benchmarks/fuzz_decoder.py --cases 3000 --coder c       # the C range coder only

Corpus: three valid files from the model (untiled 64x64; 8 tiles of 64x64 for a 96x200
image; 2 tiles with a seeded z). Each case is derived from (seed, case number) alone, so a
failing case can be replayed (``--only N``). Cases: first truncation at every position of
every corpus file (when --cases leaves room), then random mutations:

  truncate / insert_delete / byte_flip / bit_flip   accidental damage, CRC left as is
  truncate_resealed / flip_resealed                  damage with the CRC recomputed (reaches the
                                                     header checks and the entropy decoder)
  length_lie       a stream length changed (file cut or padded to match, or not), resealed
  huge_size        header claims up to 65535 x 65535 (the format's max; 100000 or 2^32-1 are
                   refused as out of range), resealed; decoded with and without the pixel limit
  header_field     a random header field set to a random / edge value, resealed
  wrong_model      another model id, resealed
  garbage          random bytes (sometimes behind a valid magic/version or a full valid header)
  splice           streams of two files mixed, resealed
  valid            an untouched corpus file (must decode to the expected image)

Checks per case: the outcome (BitstreamError = rejected; any other exception = crash;
decoded = compared with the corpus image), wall time (> --case-timeout s = hang; a worker
process is killed and restarted by a watchdog if a case does not return at all), tracemalloc
peak of the decode (> --mem-limit MiB = memory failure; for huge_size cases the peak is
reported separately), and for one case in --cli-every the CLI path too (api.decompress_file
with model lookup by id, output written atomically: error <=> no output file; one in 10 of
those through `ilc-run decompress`).

A decoded image that differs from the original counts as *silently wrong* (a failure) when
the CRC was not recomputed: the checksum must catch accidental corruption. A file whose CRC
was recomputed by the mutator is a forged-but-well-formed file; if it decodes to another
image that is reported (``forged_accepted``), not failed: a CRC is not a signature.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEADER = 68
# header field offsets (docs/bitstream.md §1): name -> (offset, struct format)
FIELDS = {
    "version": (4, "<H"), "flags": (6, "<H"), "height": (24, "<I"), "width": (28, "<I"),
    "padded_height": (32, "<I"), "padded_width": (36, "<I"), "z_mode": (40, "<B"), "reserved": (41, "<B"),
    "z_seed": (44, "<Q"), "z_temperature": (52, "<f"), "tile_height": (56, "<I"), "tile_width": (60, "<I"),
    "stream_count": (64, "<H"), "reserved2": (66, "<H"),
}
KINDS = {  # kind -> weight of the random part
    "truncate": 10, "insert_delete": 5, "byte_flip": 14, "bit_flip": 8, "truncate_resealed": 6,
    "flip_resealed": 16, "length_lie": 8, "huge_size": 8, "header_field": 9, "wrong_model": 4,
    "garbage": 6, "splice": 3, "valid": 3,
}
FAILURES = ("crash", "hang", "memory", "silently_wrong", "valid_rejected", "cli_mismatch")


# -- model and corpus -------------------------------------------------------------------------------
def tiny_model(folder: Path) -> Path:
    """The tests' tiny randomised model (tests/conftest.py::tiny_ckpt), finalised."""
    import torch

    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.config import tiny_config
    from ilc_reference.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    path = save_checkpoint(model.eval(), folder / "ilc-tiny")
    finalize_checkpoint(path)
    return path


def sample_image() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(ROOT / "ilc_export" / "data" / "kodim23.png").convert("RGB"))


def make_corpus(codec) -> list[dict]:
    img = sample_image()
    specs = [("untiled_64x64", img[100:164, 200:264], {}),
             ("tiled_96x200_8tiles", img[:96, 300:500], {"tile": 64}),
             ("seeded_64x128_2tiles", img[200:264, :128], {"tile": 64, "z_seed": 7, "z_temperature": 0.5})]
    corpus = []
    for name, im, opts in specs:
        data, _ = codec.compress(np.ascontiguousarray(im), **opts)
        dec, _ = codec.decompress(data)
        corpus.append({"name": name, "data": data, "image": dec})
    return corpus


# -- mutations --------------------------------------------------------------------------------------
def reseal(body: bytes) -> bytes:
    body = bytes(body[:-4]) if len(body) >= 4 else b""
    return body + struct.pack("<I", zlib.crc32(body))


def _stream_table(data: bytes) -> tuple[int, list[int]]:
    n = struct.unpack_from("<H", data, 64)[0]
    return n, list(struct.unpack_from(f"<{n}I", data, HEADER))


def _flip(rng, b: bytearray, lo: int = 0, hi: int | None = None, k: int | None = None) -> None:
    hi = len(b) if hi is None else hi
    for _ in range(k or int(rng.integers(1, 9))):
        i = int(rng.integers(lo, hi))
        b[i] ^= int(rng.integers(1, 256))


def _edge_value(rng, fmt: str):
    if fmt == "<f":
        choices = [np.nan, np.inf, -np.inf, -1.0, 0.0, 1e-30, 100.0, 100.5, 3.4e38, float(rng.normal())]
        return choices[int(rng.integers(len(choices)))]
    bits = struct.calcsize(fmt) * 8
    choices = [0, 1, 2, 63, 64, 65, 128, 4096, 65535, 65536, 2**bits - 1, 2**(bits - 1), int(rng.integers(0, 2**min(bits, 62)))]
    return choices[int(rng.integers(len(choices)))] % 2**bits


def mutate(kind: str, rng, corpus: list[dict], pos: int | None = None) -> tuple[bytes, int | None, bool, dict]:
    """-> (data, corpus index or None, resealed, extra options for decompress)."""
    ci = int(rng.integers(len(corpus)))
    src = corpus[ci]["data"]
    b = bytearray(src)
    opts: dict = {}
    if kind == "valid":
        return src, ci, False, opts
    if kind == "truncate":
        return src[: int(rng.integers(len(src))) if pos is None else pos], ci, False, opts
    if kind == "truncate_resealed":
        return reseal(src[: int(rng.integers(HEADER, len(src)))]), ci, True, opts
    if kind == "insert_delete":
        i = int(rng.integers(len(src)))
        if rng.random() < 0.5:
            return src[:i] + src[i + int(rng.integers(1, 9)):], ci, False, opts
        return src[:i] + rng.bytes(int(rng.integers(1, 9))) + src[i:], ci, False, opts
    if kind == "byte_flip":
        _flip(rng, b)
        return bytes(b), ci, False, opts
    if kind == "bit_flip":
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
        return bytes(b), ci, False, opts
    if kind == "flip_resealed":
        n, _ = _stream_table(src)
        start = HEADER + 4 * n if rng.random() < 0.8 else 0  # mostly payloads: the entropy decoder
        _flip(rng, b, start, len(b) - 4, k=int(rng.integers(1, 4)))
        return reseal(b), ci, True, opts
    if kind == "length_lie":
        n, lens = _stream_table(src)
        j = int(rng.integers(n))
        new = int(rng.choice([0, 1, 3, 4, lens[j] + 4, max(0, lens[j] - 4), lens[j] * 2, 2**32 - 1,
                               int(rng.integers(0, 2**32))]))
        struct.pack_into("<I", b, HEADER + 4 * j, new)
        mode = rng.random()
        if mode < 0.4 and new < 1 << 20:  # make the file length agree: unpack passes, streams shift
            body = bytes(b[:-4])
            delta = new - lens[j]
            body = body + rng.bytes(delta) if delta > 0 else body[: len(body) + delta]
            return reseal(body + b"\0\0\0\0"), ci, True, opts
        if mode < 0.7 and j + 1 < n:  # move bytes between two streams: lengths still add up
            k = j + 1
            d = int(rng.integers(-lens[j], lens[k] + 1))
            struct.pack_into("<I", b, HEADER + 4 * j, lens[j] + d)
            struct.pack_into("<I", b, HEADER + 4 * k, lens[k] - d)
        return reseal(b), ci, True, opts
    if kind == "huge_size":
        h = int(rng.choice([65535, 65535, 40000, 100000, 2**32 - 1, int(rng.integers(1, 65536))]))
        w = int(rng.choice([65535, 65535, 30000, 100000, int(rng.integers(1, 65536))]))
        struct.pack_into("<II", b, 24, h, w)
        if rng.random() < 0.8:  # consistent padding: reaches the size / stream-length checks
            struct.pack_into("<II", b, 32, -(-h // 64) * 64 % 2**32, -(-w // 64) * 64 % 2**32)
        r = rng.random()
        if r < 0.4:
            struct.pack_into("<II", b, 56, 0, 0)
        elif r < 0.7:
            t = int(rng.choice([64, 1024, 4096, 65536 - 64]))
            struct.pack_into("<II", b, 56, t, t)
        if rng.random() < 0.5:
            opts["max_pixels"] = None  # no pixel limit: the stream-length checks must refuse it
        return reseal(b), ci, True, opts
    if kind == "header_field":
        name = str(rng.choice(list(FIELDS)))
        off, fmt = FIELDS[name]
        struct.pack_into(fmt, b, off, _edge_value(rng, fmt))
        return reseal(b), ci, True, opts
    if kind == "wrong_model":
        b[8:24] = rng.bytes(16)
        return reseal(b), ci, True, opts
    if kind == "garbage":
        r = rng.random()
        junk = rng.bytes(int(rng.integers(0, 4096)))
        if r < 0.3:
            return junk, None, False, opts
        if r < 0.6:
            return b"ILC\x00\x01\x00" + junk, None, False, opts
        # a valid header of a corpus file, then garbage streams under a valid table and CRC
        n, lens = _stream_table(src)
        payload = rng.bytes(sum(lens))
        return reseal(src[: HEADER + 4 * n] + payload + b"\0\0\0\0"), ci, True, opts
    if kind == "splice":
        other = corpus[int(rng.integers(len(corpus)))]["data"]
        n1, l1 = _stream_table(src)
        n2, l2 = _stream_table(other)
        p1, p2 = HEADER + 4 * n1, HEADER + 4 * n2
        s1 = [src[p1 + sum(l1[:i]): p1 + sum(l1[: i + 1])] for i in range(n1)]
        s2 = [other[p2 + sum(l2[:i]): p2 + sum(l2[: i + 1])] for i in range(n2)]
        i, j = int(rng.integers(n1)), int(rng.integers(n2))
        if s1[i] == s2[j]:
            s2[j] = s2[j][::-1]
        s1[i] = s2[j]
        body = src[:HEADER] + struct.pack(f"<{n1}I", *map(len, s1)) + b"".join(s1)
        return reseal(body + b"\0\0\0\0"), ci, True, opts
    raise ValueError(kind)


def case_spec(i: int, seed: int, n_cases: int, corpus: list[dict], exhaustive: bool):
    """Kind and data of case i (a function of seed and i only)."""
    rng = np.random.default_rng([seed, i])
    sizes = [len(c["data"]) for c in corpus]
    n_trunc = sum(sizes)
    if exhaustive and n_cases >= 2 * n_trunc and i < n_trunc:  # truncation at every position
        ci = 0
        while i >= sizes[ci]:
            i -= sizes[ci]
            ci += 1
        return "truncate", corpus[ci]["data"][:i], ci, False, {}
    kinds = list(KINDS)
    p = np.array([KINDS[k] for k in kinds], float)
    kind = str(rng.choice(kinds, p=p / p.sum()))
    data, ci, resealed, opts = mutate(kind, rng, corpus)
    return kind, data, ci, resealed, opts


# -- running ----------------------------------------------------------------------------------------
class Fuzzer:
    def __init__(self, model: Path, seed: int = 0, n_cases: int = 10000, exhaustive: bool = True,
                 case_timeout: float = 10.0, mem_limit_mib: float = 64.0, cli_every: int = 20, workdir: Path | None = None):
        from ilc_export.pipeline.api import CodecCache, open_codec

        self.model, self.seed, self.n_cases, self.exhaustive = Path(model), seed, n_cases, exhaustive
        self.case_timeout, self.mem_limit = case_timeout, mem_limit_mib * 2**20
        self.cli_every = cli_every
        self.codec = open_codec(self.model, backend="torch")
        self.corpus = make_corpus(self.codec)
        self.cache = CodecCache(None, "torch", search=[self.model])  # the CLI's lookup by model id
        self._tmp = tempfile.TemporaryDirectory(prefix="ilc-fuzz-") if workdir is None else None
        self.workdir = Path(workdir or self._tmp.name)

    def run_case(self, i: int) -> dict:
        from ilc_export.codec.errors import BitstreamError

        kind, data, ci, resealed, opts = case_spec(i, self.seed, self.n_cases, self.corpus, self.exhaustive)
        rec = {"case": i, "kind": kind, "bytes": len(data), "resealed": resealed}
        tracemalloc.start()
        t0 = time.perf_counter()
        img = None
        try:
            img, _ = self.codec.decompress(data, **opts)
            outcome = "decoded"
        except BitstreamError as e:
            outcome, rec["error"] = "rejected", str(e)[:120]
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - this is what we are hunting
            outcome, rec["error"] = "crash", f"{type(e).__name__}: {e}"[:300]
        rec["seconds"] = time.perf_counter() - t0
        rec["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if outcome == "decoded":
            same = ci is not None and img.shape == self.corpus[ci]["image"].shape and np.array_equal(img, self.corpus[ci]["image"])
            if same:
                outcome = "decoded_same"
            elif resealed:
                outcome = "forged_accepted"
            else:
                outcome = "silently_wrong"
        rec["outcome"] = outcome
        fails = []
        if outcome in ("crash", "silently_wrong"):
            fails.append(outcome)
        if kind == "valid" and outcome != "decoded_same":
            fails.append("valid_rejected")
        if rec["seconds"] > self.case_timeout:
            fails.append("hang")
        if rec["peak"] > self.mem_limit:
            fails.append("memory")
        if self.cli_every and i % self.cli_every == 0:
            cli = self.run_cli_path(i, data, via_typer=(i // self.cli_every) % 10 == 0)
            rec["cli"] = cli
            want_ok = outcome in ("decoded_same", "forged_accepted", "silently_wrong") and "max_pixels" not in opts
            if cli != ("ok" if want_ok else "error") and not ("max_pixels" in opts and cli in ("ok", "error")):
                fails.append("cli_mismatch")
        rec["fails"] = sorted(set(fails))
        return rec

    def run_cli_path(self, i: int, data: bytes, via_typer: bool) -> str:
        """'ok' (output written, nothing else), 'error' (reported, no output) or 'bad: ...'."""
        from ilc_export.pipeline import api

        d = self.workdir / f"case{i}"
        d.mkdir(parents=True, exist_ok=True)
        src, dst = d / "in.ilc", d / "out.png"
        src.write_bytes(data)
        try:
            if via_typer:
                from typer.testing import CliRunner

                from ilc_export.cli.run_cli import app

                r = CliRunner().invoke(app, ["decompress", str(src), "-o", str(dst), "--model", str(self.model)])
                if r.exception is not None and not isinstance(r.exception, SystemExit):
                    return f"bad: {type(r.exception).__name__}: {r.exception}"
                if "Traceback" in r.output:
                    return "bad: traceback printed"
                ok = r.exit_code == 0
            else:
                res = api.decompress_file(self.cache, src, dst)
                ok = res.error is None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001
            return f"bad: {type(e).__name__}: {e}"[:300]
        left = sorted(p.name for p in d.iterdir())
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
        if ok and left == ["in.ilc", "out.png"]:
            return "ok"
        if not ok and left == ["in.ilc"]:
            return "error"
        return f"bad: ok={ok}, files {left}"


def summarize(records: list[dict], elapsed: float) -> dict:
    fails = Counter(f for r in records for f in r["fails"])
    huge = [r["peak"] for r in records if r["kind"] == "huge_size"]
    return {
        "cases": len(records),
        "failures": {k: fails.get(k, 0) for k in FAILURES},
        "outcomes": dict(Counter(r["outcome"] for r in records)),
        "kinds": dict(Counter(r["kind"] for r in records)),
        "cli_checked": sum(1 for r in records if "cli" in r),
        "max_case_seconds": max((r["seconds"] for r in records), default=0.0),
        "max_peak_mib": max((r["peak"] for r in records), default=0) / 2**20,
        "huge_size_cases": len(huge),
        "huge_size_max_peak_kib": max(huge, default=0) / 1024,
        "elapsed_s": elapsed,
        "failed_cases": [r for r in records if r["fails"]][:20],
    }


def run_in_process(fuzzer: Fuzzer, cases: range) -> list[dict]:
    return [fuzzer.run_case(i) for i in cases]


def run_watched(args, model: Path) -> list[dict]:
    """Cases in a worker process; a case that does not return within the hard bound is a
    hang: the worker is killed and restarted after it."""
    records: list[dict] = []
    nxt, hard = 0, max(30.0, 3 * args.case_timeout)
    while nxt < args.cases:
        cmd = [sys.executable, __file__, "--worker", "--model", str(model), "--seed", str(args.seed),
               "--cases", str(args.cases), "--start", str(nxt), "--case-timeout", str(args.case_timeout),
               "--mem-limit", str(args.mem_limit), "--cli-every", str(args.cli_every)]
        if not args.exhaustive:
            cmd.append("--no-exhaustive")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
        deadline = time.monotonic() + 300.0  # start-up (imports, corpus)
        while True:
            r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:  # no answer in time: a hang
                proc.kill()
                proc.wait()
                records.append({"case": nxt, "kind": "?", "outcome": "hang", "seconds": hard, "peak": 0,
                                "fails": ["hang"], "resealed": None})
                nxt += 1
                break
            line = proc.stdout.readline()
            if not line:  # worker died (a crash of the interpreter itself)
                proc.wait()
                if nxt < args.cases:
                    records.append({"case": nxt, "kind": "?", "outcome": "crash", "seconds": 0, "peak": 0,
                                    "fails": ["crash"], "resealed": None, "error": f"worker exit {proc.returncode}"})
                    nxt += 1
                break
            if line.startswith("{"):
                rec = json.loads(line)
                records.append(rec)
                nxt = rec["case"] + 1
                deadline = time.monotonic() + hard
                if len(records) % 1000 == 0:
                    print(f"  {len(records)} cases", file=sys.stderr, flush=True)
        if nxt >= args.cases:
            proc.wait()
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, help="finalised checkpoint (default: the tiny random test model)")
    ap.add_argument("--case-timeout", type=float, default=10.0, help="seconds; a slower case is a hang")
    ap.add_argument("--mem-limit", type=float, default=64.0, help="MiB of tracemalloc peak per case")
    ap.add_argument("--cli-every", type=int, default=20, help="check the CLI path on one case in N (0: never)")
    ap.add_argument("--no-exhaustive", dest="exhaustive", action="store_false", help="no every-position truncation")
    ap.add_argument("--only", type=int, help="replay one case and print it")
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--coder", choices=["auto", "c", "constriction"],
                    help="entropy coder implementation (sets ILC_ENTROPY_CODER for this run and its workers)")
    args = ap.parse_args(argv)
    if args.coder:
        os.environ["ILC_ENTROPY_CODER"] = args.coder
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="ilc-fuzz-model-")
    model = args.model or tiny_model(Path(tmp.name))
    if args.worker or args.only is not None:
        fz = Fuzzer(model, args.seed, args.cases, args.exhaustive, args.case_timeout, args.mem_limit, args.cli_every)
        cases = [args.only] if args.only is not None else range(args.start, args.cases)
        for i in cases:
            print(json.dumps(fz.run_case(i), default=str), flush=True)
        return 0
    t0 = time.perf_counter()
    records = run_watched(args, model)
    s = summarize(records, time.perf_counter() - t0)
    from ilc_export.codec.entropy import resolve_coder

    s["entropy_coder"] = resolve_coder()
    print(f"fuzzed decompress: {s['cases']} cases in {s['elapsed_s']:.0f} s (seed {args.seed}; coder {s['entropy_coder']}; "
          f"{s['cli_checked']} also through the CLI path)")
    print("  failures: " + ", ".join(f"{k} {v}" for k, v in s["failures"].items()))
    print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items())))
    print("  kinds:    " + ", ".join(f"{k} {v}" for k, v in sorted(s["kinds"].items())))
    print(f"  slowest case {s['max_case_seconds'] * 1000:.0f} ms; largest tracemalloc peak {s['max_peak_mib']:.2f} MiB; "
          f"huge-size claims: {s['huge_size_cases']} cases, peak at most {s['huge_size_max_peak_kib']:.0f} KiB")
    for r in s["failed_cases"]:
        print(f"  FAILED case {r['case']} ({r['kind']}): {r['fails']} {r.get('error', '')} {r.get('cli', '')}")
    if args.json:
        args.json.write_text(json.dumps(s, indent=1, default=str) + "\n")
    return 1 if sum(s["failures"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
