"""Byte-identity guard: files and decoded pixels of shipped models match recorded hashes.

Each case compresses a 256x384 crop with a shipped model on one backend (one thread, so the
float path is the same on every run on one machine), decompresses it, and compares the sha256
of the file bytes and of the decoded pixels with tests/data/bitstream_golden.json. Fused
(runner-side tiles) and host (graph by graph) paths must both give the recorded bytes; a
small tile size and a seeded surrogate z cover the tiling and the z = noise decode.

The hashes depend on the machine's float kernels (an encoder on another CPU may round a
latent the other way), so they are recorded per platform and vector unit; cases whose machine has no
record are skipped. Record (with code known to be right) by running this file with
ILC_GOLDEN_RECORD=1: it rewrites the entries of this machine.

ONNX Runtime cases use the model's ONNX export found on the model search path (e.g.
``ilc-export onnx --ckpt ... --out engines/<model>/onnx``); where there is none (a fresh
clone) they export the shipped checkpoint into a temporary folder first, as a user would.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE, SHARED

GOLDEN = Path(__file__).resolve().parent / "data" / "bitstream_golden.json"
RECORD = os.environ.get("ILC_GOLDEN_RECORD") == "1"
MODELS = ["ilc-q2", "baseline-q1"]
BACKENDS = ["torch", "onnxruntime"]
#: case name -> compress options (z options only where the model has a z)
CASES = {"plain": {}, "tile128": {"tile": 128}, "zseed": {"z_seed": 7, "z_temperature": 0.5}}
CROP = (256, 384)


def _machine() -> str:
    """Platform and widest x86 vector unit: the float kernels torch and ONNX Runtime pick."""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    isa = next((f for f in ("avx512f", "avx2") if f" {f}" in flags), "")
    return "-".join(x for x in (platform.system(), platform.machine(), isa) if x)


def _images() -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    paths = [SAMPLE] + [SHARED / "kodak" / f"kodim0{i}.png" for i in (1, 2, 3)]
    out = []
    for p in paths:
        if p.exists():
            img = np.asarray(Image.open(p).convert("RGB"))
            out.append((p.stem, np.ascontiguousarray(img[:CROP[0], :CROP[1]])))
    return out


def _sha(data) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def _load() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@pytest.fixture(scope="module")
def recorded():
    data = _load()
    yield data
    if RECORD:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """model -> an ONNX export made here for models with none on the search path."""
    made: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in made:
            pytest.importorskip("onnx")
            from ilc_export.export.onnx_export import export_onnx
            from ilc_export.pipeline.models import checkpoint_dir

            made[model] = export_onnx(checkpoint_dir() / f"{model}.safetensors", tmp_path_factory.mktemp(model) / "onnx")
        return made[model]

    return get


def _codec(model: str, backend: str, fused: bool, exports):
    from ilc_export.pipeline.api import open_codec
    from ilc_export.pipeline.codec import ImageCodec
    from ilc_export.pipeline.models import ModelNotFound

    if backend == "torch":
        pytest.importorskip("torch")
    try:
        codec = open_codec(model, backend=backend, threads=1)
    except ModelNotFound:
        codec = open_codec(exports(model), backend=backend, threads=1)
    return codec if fused else ImageCodec(codec.runner, codec.tables, fused=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", MODELS)
def test_files_and_pixels_match_recorded_hashes(recorded, exports, model, backend):
    torch = pytest.importorskip("torch") if backend == "torch" else None
    threads = torch.get_num_threads() if torch else None
    images = _images()
    assert images, "the bundled sample image is missing"
    want = recorded.setdefault(_machine(), {}).setdefault(model, {}).setdefault(backend, {})
    if not want and not RECORD:
        pytest.skip(f"no hashes recorded for {_machine()} {model} {backend}")
    try:
        for fused in (True, False):
            codec = _codec(model, backend, fused, exports)
            for name, img in images:
                for case, opts in CASES.items():
                    if "z_seed" in opts and codec.cfg.kind != "ilc":
                        continue
                    data, _ = codec.compress(img, **opts)
                    pixels, _ = codec.decompress(data)
                    got = {"file": _sha(data), "pixels": _sha(np.ascontiguousarray(pixels)), "bytes": len(data)}
                    key = f"{name}/{case}"
                    if RECORD and fused:
                        want[key] = got
                    elif key in want:
                        path = "fused" if fused else "host"
                        assert got == want[key], f"{model} {backend} {path} {key}: bytes or pixels changed"
    finally:
        if torch is not None:
            torch.set_num_threads(threads)
