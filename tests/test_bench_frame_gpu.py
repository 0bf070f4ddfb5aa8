"""Dry run of benchmarks/bench_frame_gpu.py on the CPU with a tiny model (the GPU run uses the same code)."""
from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT

pytest.importorskip("torch")
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_frame_gpu


def test_cpu_dry_run(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "frame.json"
    res = bench_frame_gpu.main(["--ckpt", str(tiny_ckpt), "--device", "cpu", "--precision", "fp32,fp16",
                                "--size", "200x130", "--tile", "128", "--frames", "1", "--warmup", "1",
                                "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    rows = res["results"]
    assert [(r["precision"], r["path"]) for r in rows] == [("fp32", "fused"), ("fp32", "host")]
    fused, host = rows
    assert fused["bytes"] == host["bytes"] and fused["psnr"] == host["psnr"]  # same file, same pixels
    for r in rows:
        assert r["device"] == "cpu" and r["fps_round_trip"] > 0
        for k in ("compress", "decompress"):
            ms = r["ms"][k]
            assert ms["transform"] > 0 and ms["entropy"] > 0
            assert ms["wall"] == pytest.approx(ms["transform"] + ms["entropy"] + ms["rest"])
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_bad_device_is_one_line(tiny_ckpt):
    with pytest.raises(SystemExit, match="unknown device 'gpu'"):
        bench_frame_gpu.main(["--ckpt", str(tiny_ckpt), "--device", "gpu", "--frames", "1"])
