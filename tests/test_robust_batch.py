"""Batches: interrupted or killed runs leave only complete files; concurrent runs do not mix bytes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ilc_export.codec.bitstream import unpack
from ilc_export.pipeline import api
from ilc_export.pipeline.api import open_codec, write_output

from conftest import ROOT

N_IMAGES = 60


def _images(folder, n, seed, size=128, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = names or [f"img{i:03d}" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def _compress_cmd(src, out, ckpt, *extra):
    return [sys.executable, "-m", "ilc_export.cli.run_cli", "compress", str(src), "-o", str(out),
            "--model", str(ckpt), "--threads", "1", *extra]


def _only_complete_bitstreams(out):
    names = sorted(p.name for p in out.iterdir())  # hidden temp files included
    assert all(n.endswith(".ilc") and not n.startswith(".") for n in names), names
    for n in names:
        unpack((out / n).read_bytes())  # CRC and lengths: complete, not truncated
    return names


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_batch_leaves_no_partial_files(tiny_ckpt, tmp_path, sig):
    src = _images(tmp_path / "in", N_IMAGES, 0)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # a test run started in the background (`pytest &`) inherits an ignored SIGINT: give the child the default
    proc = subprocess.Popen(_compress_cmd(src, out, tiny_ckpt), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and sum(1 for _ in out.glob("*.ilc")) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    names = _only_complete_bitstreams(out)
    assert 3 <= len(names) < N_IMAGES, "the batch was not stopped midway"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    codec = open_codec(tiny_ckpt)
    assert codec.decompress((out / names[-1]).read_bytes())[0].shape == (128, 128, 3)


def test_two_processes_share_an_output_folder(tiny_ckpt, tmp_path):
    shared = [f"s{i:02d}" for i in range(10)]
    src1 = _images(tmp_path / "in1", 0, 1, 64, shared + ["only1"])
    src2 = _images(tmp_path / "in2", 0, 2, 64, shared + ["only2"])
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --force: both may replace what the other wrote (without it the second writer of a name is refused)
    procs = [subprocess.Popen(_compress_cmd(s, out, tiny_ckpt, "--force"), cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for s in (src1, src2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    names = _only_complete_bitstreams(out)
    assert names == sorted([f"{n}.ilc" for n in shared] + ["only1.ilc", "only2.ilc"])
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        codec = open_codec(tiny_ckpt)
        for n in names:
            got = (out / n).read_bytes()
            stem = n[:-4]
            want = [codec.compress(api.load_rgb(s / f"{stem}.png")[0])[0] for s in (src1, src2) if (s / f"{stem}.png").exists()]
            assert got in want, n  # one writer's complete file, never a mix
    finally:
        torch.set_num_threads(threads)


def test_write_output_interrupted_mid_write(tmp_path, monkeypatch):
    target = tmp_path / "x.ilc"
    real_write = os.write
    calls = []

    def flaky_write(fd, data):
        calls.append(fd)
        real_write(fd, bytes(data)[:5])
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        write_output(target, b"0123456789" * 100)
    assert calls and list(tmp_path.iterdir()) == []  # nothing, not even a hidden temp file
    monkeypatch.setattr(os, "write", real_write)
    write_output(target, b"old")
    monkeypatch.setattr(os, "write", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        write_output(target, b"new" * 100)
    monkeypatch.setattr(os, "write", real_write)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.ilc"]


def test_write_output_replaces_and_falls_back(tmp_path, monkeypatch):
    target = tmp_path / "y.png"
    write_output(target, b"a")
    os.chmod(target, 0o640)
    write_output(target, b"bb")
    assert target.read_bytes() == b"bb" and (target.stat().st_mode & 0o777) == 0o640
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)  # platforms without O_TMPFILE: write_atomic
    write_output(target, b"ccc")
    write_output(tmp_path / "z.png", b"d")
    assert target.read_bytes() == b"ccc" and sorted(p.name for p in tmp_path.iterdir()) == ["y.png", "z.png"]


def test_decompress_output_is_atomic(tiny_ckpt, tmp_path, monkeypatch):
    """A failure while writing the decoded PNG leaves no file; a success a complete PNG."""
    codec = open_codec(tiny_ckpt)
    src = tmp_path / "a.ilc"
    src.write_bytes(codec.compress(np.full((20, 30, 3), 99, np.uint8))[0])

    def boom(path, data, overwrite=True):
        raise OSError("disk full")

    monkeypatch.setattr(api, "write_output", boom)
    r = api.decompress_file(lambda data: codec, src, tmp_path / "a.png")
    assert r.error and "disk full" in r.error and not (tmp_path / "a.png").exists()
    monkeypatch.undo()
    r = api.decompress_file(lambda data: codec, src, tmp_path / "a.png")
    assert r.error is None and Image.open(tmp_path / "a.png").size == (30, 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ilc", "a.png"]


def test_write_output_never_replaces_without_overwrite(tmp_path, monkeypatch):
    """overwrite=False: an existing target is left as it is (the final link is the check), on the
    O_TMPFILE path and on the portable one; no temporary file is left behind."""
    t = tmp_path / "a.ilc"
    write_output(t, b"old")
    with pytest.raises(FileExistsError):
        write_output(t, b"new", overwrite=False)
    assert t.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.ilc"]
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    with pytest.raises(FileExistsError):
        write_output(t, b"new", overwrite=False)
    write_output(tmp_path / "b.ilc", b"fresh", overwrite=False)
    assert t.read_bytes() == b"old" and (tmp_path / "b.ilc").read_bytes() == b"fresh"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ilc", "b.ilc"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "b.ilc").stat().st_mode & 0o777 == 0o666 & ~umask
