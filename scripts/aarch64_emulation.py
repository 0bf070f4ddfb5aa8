"""The runtime on Linux aarch64 under user-mode emulation (qemu-user-static), against x86.

    sudo python scripts/aarch64_emulation.py setup [--root /opt/ilc-aarch64]
    python scripts/aarch64_emulation.py check [--root ...] [--work DIR] [--onnx DIR] [--size 128x192] [--images 2]

setup (Debian 12 host, root, network; see ../shared/PLATFORMS.md):
  1. apt: qemu-user-static, gcc-aarch64-linux-gnu (cross compiler); dpkg --add-architecture arm64.
  2. An arm64 sysroot: `apt-get download` of python3.11 and the libraries it needs (arm64),
     unpacked with `dpkg -x` (no arm64 package is installed on the host).
  3. The runtime's aarch64 wheels from PyPI (`pip download --only-binary=:all: --platform
     manylinux2014_aarch64 --platform manylinux_2_28_aarch64 --python-version 3.11`),
     unpacked into ROOT/site. onnxruntime is pinned to 1.23.2: 1.32 crashes at import under
     qemu 7.2 (PLATFORMS.md); 1.23.2 is also the newest cp310 aarch64 wheel (JetPack 6).
     constriction is not installed: it has no aarch64 wheel. The entropy coder there is
  4. the C coder, cross-compiled from ilc_export/codec/_rangecoder.c with the same flags as
     setup.py into ROOT/ext.

check (any user, once set up):
  x86 (this interpreter): export a shipped model to ONNX (or --onnx), compress a few Kodak
  crops with ONNX Runtime (1 thread) and decode them. aarch64 (python3.11 under qemu, a copy
  of the package plus the cross-built coder): decode the x86 files, compress the same
  crops. x86 again: decode the aarch64 files. Compared: the decoded symbols (must be
  identical: the entropy contract), the pixels, the file bytes (may differ: ONNX Runtime's
  float kernels differ between x86 and aarch64 (FMA, vector widths), so y - mu can round
  the other way for rare elements; such a file is still valid everywhere).
  Prints SAME PIXELS when every file decodes to the same image on both machines.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = Path(os.environ.get("ILC_AARCH64_ROOT", "/opt/ilc-aarch64"))
QEMU = "qemu-aarch64-static"
ORT_EMULATED = "onnxruntime==1.23.2"

#: arm64 packages of the sysroot (PLATFORMS.md) + libpython3.11-dev for the headers
ARM64_DEBS = [
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libpython3.11-dev", "libpython3.11",
    "libc6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libgcc-s1", "libstdc++6", "libbz2-1.0", "liblzma5",
    "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6", "libreadline8", "libdb5.3", "libcrypt1", "libnsl2",
    "libtirpc3", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2",
    "libkeyutils1", "libgomp1",
]
ALL_ARCH_DEBS = ["media-types"]
CFLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared"]


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def runtime_requirements() -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_platform_support import runtime_requirements as reqs

    env = dict(__import__("test_platform_support").JETSON_ENV, python_version="3.11", python_full_version="3.11.2")
    out = [r for r in reqs(env) if not r.startswith("onnxruntime")]
    return out + [ORT_EMULATED]


def setup(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if shutil.which(QEMU) is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        run(["apt-get", "install", "-y", "qemu-user-static", "gcc-aarch64-linux-gnu"])
    if "arm64" not in subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout:
        run(["dpkg", "--add-architecture", "arm64"])
        run(["apt-get", "update"])
    debs = root / "debs"
    debs.mkdir(exist_ok=True)
    run(["apt-get", "download", *[f"{p}:arm64" for p in ARM64_DEBS], *ALL_ARCH_DEBS], cwd=debs)
    sysroot = root / "sysroot"
    sysroot.mkdir(exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg", "-x", deb, sysroot])
    wheels = root / "wheels"
    wheels.mkdir(exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--platform", "manylinux2014_aarch64",
         "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11", "--implementation", "cp",
         "--dest", wheels, *runtime_requirements()])
    site = root / "site"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir()
    for whl in sorted(wheels.glob("*.whl")):
        run([sys.executable, "-m", "zipfile", "-e", whl, site])
    build_ext(root)
    print(f"aarch64 runtime ready in {root}")


def build_ext(root: Path) -> Path:
    sysroot = root / "sysroot"
    inc = [sysroot / "usr/include/python3.11", sysroot / "usr/include"]
    out_dir = root / "ext"
    out_dir.mkdir(exist_ok=True)
    so = out_dir / "_rangecoder.cpython-311-aarch64-linux-gnu.so"
    run(["aarch64-linux-gnu-gcc", *CFLAGS, *[f"-I{i}" for i in inc], ROOT / "ilc_export/codec/_rangecoder.c", "-o", so])
    return so


def _images(n: int, size: tuple[int, int]):
    import numpy as np
    from PIL import Image

    kodak = sorted(glob.glob(str(ROOT.parent / "shared/data/kodak/*.png"))) or sorted(glob.glob("/work/shared/data/kodak/*.png"))
    paths = [Path(p) for p in kodak[:n]] or [ROOT / "ilc_export/data/kodim23.png"]
    h, w = size
    out = {}
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        out[p.stem] = np.ascontiguousarray(img[100:100 + h, 100:100 + w])
    return out


def _codec(onnx: Path):
    from ilc_export.backends import load_backend
    from ilc_export.pipeline.codec import ImageCodec

    return ImageCodec(load_backend("onnxruntime", onnx, threads=1))


def _decode_all(codec, folder: Path, out: Path) -> dict:
    import numpy as np

    info = {}
    for f in sorted(folder.glob("*.ilc")):
        data = f.read_bytes()
        syms = codec.file_symbols(data)
        img, _ = codec.decompress(data)
        np.save(out / f"{f.stem}.pixels.npy", img)
        np.savez(out / f"{f.stem}.symbols.npz", **{f"w{i}": s[0] for i, s in enumerate(syms)},
                 **{f"y{i}": s[1] for i, s in enumerate(syms)})
        info[f.stem] = {"bytes": len(data)}
    return info


def worker(work: Path, onnx: Path) -> None:
    """Runs under emulation: decode the x86 files, compress the crops, decode its own files."""
    import numpy as np

    from ilc_export.codec.entropy import resolve_coder

    codec = _codec(onnx)
    rep = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
           "onnxruntime": __import__("onnxruntime").__version__, "coder": resolve_coder()}
    (work / "arm").mkdir(exist_ok=True)
    (work / "arm_dec_x86").mkdir(exist_ok=True)
    (work / "arm_dec_arm").mkdir(exist_ok=True)
    t = time.perf_counter()
    rep["decode_x86_files"] = _decode_all(codec, work / "x86", work / "arm_dec_x86")
    rep["decode_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for npy in sorted((work / "crops").glob("*.npy")):
        data, _ = codec.compress(np.load(npy))
        (work / "arm" / f"{npy.stem}.ilc").write_bytes(data)
    rep["compress_s"] = time.perf_counter() - t
    _decode_all(codec, work / "arm", work / "arm_dec_arm")
    (work / "arm_report.json").write_text(json.dumps(rep, indent=1))
    print(json.dumps(rep))


def check(root: Path, work: Path, onnx: Path | None, size: tuple[int, int], n_images: int) -> int:
    import numpy as np

    if shutil.which(QEMU) is None:
        print("qemu-user-static is not installed", file=sys.stderr)
        return 2
    sysroot = root / "sysroot"
    so = root / "ext" / "_rangecoder.cpython-311-aarch64-linux-gnu.so"
    if not (sysroot / "usr/bin/python3.11").exists() or not (root / "site").is_dir():
        print(f"no aarch64 runtime in {root}: run `{sys.argv[0]} setup` first", file=sys.stderr)
        return 2
    if not so.exists() or so.stat().st_mtime < (ROOT / "ilc_export/codec/_rangecoder.c").stat().st_mtime:
        so = build_ext(root)
    work.mkdir(parents=True, exist_ok=True)
    # a copy of the runtime packages (no checkpoints, no host .so) plus the aarch64 coder
    src = work / "src"
    if src.exists():
        shutil.rmtree(src)
    ign = shutil.ignore_patterns("*.so", "__pycache__", "checkpoints", "*.safetensors")
    shutil.copytree(ROOT / "ilc_export", src / "ilc_export", ignore=ign)
    shutil.copytree(ROOT / "reference/ilc_reference", src / "ilc_reference", ignore=ign)
    shutil.copy(so, src / "ilc_export/codec" / so.name)
    if onnx is None:
        onnx = work / "onnx"
        from ilc_export.contract.manifest import MANIFEST_NAME

        if not (onnx / MANIFEST_NAME).exists():
            from ilc_export.export.onnx_export import export_onnx
            from ilc_export.pipeline.models import shipped_checkpoint

            ckpt = work / "model.safetensors"
            shutil.copy(shipped_checkpoint(), ckpt)
            export_onnx(ckpt, onnx)
    crops = work / "crops"
    crops.mkdir(exist_ok=True)
    for sub in ("x86", "x86_dec_x86", "x86_dec_arm"):
        (work / sub).mkdir(exist_ok=True)
    codec = _codec(onnx)
    for name, img in _images(n_images, size).items():
        np.save(crops / f"{name}.npy", img)
        data, _ = codec.compress(img)
        (work / "x86" / f"{name}.ilc").write_bytes(data)
    _decode_all(codec, work / "x86", work / "x86_dec_x86")

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "OMP_NUM_THREADS": "1",
           "QEMU_LD_PREFIX": str(sysroot), "PYTHONHOME": str(sysroot / "usr"),
           "PYTHONPATH": os.pathsep.join([str(src), str(root / "site")]), "PYTHONDONTWRITEBYTECODE": "1"}
    t = time.perf_counter()
    res = subprocess.run([QEMU, "-L", sysroot, sysroot / "usr/bin/python3.11", Path(__file__).resolve(), "worker",
                          "--work", work, "--onnx", onnx], env={k: str(v) for k, v in env.items()},
                         capture_output=True, text=True, timeout=3600)
    print(res.stdout[-3000:])
    if res.returncode:
        print(res.stderr[-5000:], file=sys.stderr)
        return 1
    emu_s = time.perf_counter() - t
    arm = json.loads((work / "arm_report.json").read_text())
    _decode_all(codec, work / "arm", work / "x86_dec_arm")

    rows, all_same_pixels, all_same_symbols = [], True, True
    for f in sorted((work / "x86").glob("*.ilc")):
        n = f.stem
        # 1. x86 file: decoded on x86 and on aarch64
        sx, sa = np.load(work / "x86_dec_x86" / f"{n}.symbols.npz"), np.load(work / "arm_dec_x86" / f"{n}.symbols.npz")
        sym_same = all((sx[k] == sa[k]).all() for k in sx.files)
        px, pa = np.load(work / "x86_dec_x86" / f"{n}.pixels.npy"), np.load(work / "arm_dec_x86" / f"{n}.pixels.npy")
        # 2. aarch64 file: decoded on aarch64 and on x86
        tx, ta = np.load(work / "x86_dec_arm" / f"{n}.symbols.npz"), np.load(work / "arm_dec_arm" / f"{n}.symbols.npz")
        sym_same2 = all((tx[k] == ta[k]).all() for k in tx.files)
        qx, qa = np.load(work / "x86_dec_arm" / f"{n}.pixels.npy"), np.load(work / "arm_dec_arm" / f"{n}.pixels.npy")
        xb, ab = f.read_bytes(), (work / "arm" / f"{n}.ilc").read_bytes()
        diff_bytes = sum(a != b for a, b in zip(xb, ab)) + abs(len(xb) - len(ab))
        r = {"image": n, "x86_file_symbols_same": sym_same, "x86_file_pixels_same": bool((px == pa).all()),
             "x86_file_max_pixel_diff": int(np.abs(px.astype(int) - pa.astype(int)).max()),
             "arm_file_symbols_same": sym_same2, "arm_file_pixels_same": bool((qx == qa).all()),
             "arm_file_max_pixel_diff": int(np.abs(qx.astype(int) - qa.astype(int)).max()),
             "files_identical": xb == ab, "file_bytes_differing": diff_bytes, "bytes": len(xb)}
        rows.append(r)
        all_same_symbols &= sym_same and sym_same2
        all_same_pixels &= r["x86_file_pixels_same"] and r["arm_file_pixels_same"]
        print(json.dumps(r))
    report = {"host": platform.machine(), "emulated": arm, "emulation_wall_s": emu_s, "size": list(size), "rows": rows,
              "all_symbols_same": all_same_symbols, "all_pixels_same": all_same_pixels}
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"emulated {arm['machine']} Python {arm['python']} (coder {arm['coder']}, onnxruntime {arm['onnxruntime']}): "
          f"{len(rows)} images, symbols {'identical' if all_same_symbols else 'DIFFER'}, "
          f"{'SAME PIXELS' if all_same_pixels else 'pixels differ'}; files identical: "
          f"{sum(r['files_identical'] for r in rows)}/{len(rows)}; {emu_s:.0f} s under emulation")
    return 0 if all_same_symbols and all_same_pixels else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["setup", "check", "worker", "build-ext"])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ilc-aarch64-check"))
    ap.add_argument("--onnx", type=Path)
    ap.add_argument("--size", default="128x192", help="HxW of the crops")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--json", type=Path, help="check: copy the report here")
    args = ap.parse_args(argv)
    if args.cmd == "setup":
        setup(args.root)
        return 0
    if args.cmd == "build-ext":
        build_ext(args.root)
        return 0
    if args.cmd == "worker":
        worker(args.work, args.onnx)
        return 0
    h, w = (int(x) for x in args.size.lower().split("x"))
    rc = check(args.root, args.work, args.onnx, (h, w), args.images)
    if args.json and (args.work / "report.json").exists():
        shutil.copy(args.work / "report.json", args.json)
    return rc


if __name__ == "__main__":
    sys.exit(main())
