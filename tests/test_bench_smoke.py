"""Smoke tests of benchmarks/flops.py and benchmarks/bench_backends.py on a tiny model."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
from conftest import ROOT, randomize

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_backends
import flops


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
    """A tiny random ILC checkpoint WITHOUT codec tables."""
    import torch
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.config import tiny_config
    from ilc_reference.model import build_model

    torch.manual_seed(0)
    model = randomize(build_model(tiny_config()), 0.05).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("bench") / "ilc-tiny")


@pytest.fixture(scope="module")
def tiny_export(tiny_raw, tmp_path_factory):
    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_export.export.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("bench_export")
    ckpt = d / tiny_raw.name
    shutil.copyfile(tiny_raw, ckpt)
    finalize_checkpoint(ckpt)
    return ckpt, export_onnx(ckpt, d / "onnx")


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_graph_flops_matches_hand_count(tiny_export):
    import torch
    from ilc_reference.checkpoint import load_model

    ckpt, onnx_dir = tiny_export
    model = load_model(ckpt)
    h, w = 128, 192
    hh, hw = h // 64, w // 64  # hyper-latent grid
    # hyper_mean = conv3x3 at H/64, depth-to-space, conv3x3 at H/32, depth-to-space, conv3x3 at H/16
    convs = [m for m in model.h_s_mean.net if isinstance(m, torch.nn.Conv2d)]
    hand = sum((hh << i) * (hw << i) * c.out_channels * c.in_channels * 9 for i, c in enumerate(convs))
    first = hh * hw * convs[0].out_channels * convs[0].in_channels * 9  # one conv, by hand
    assert first == 2 * 3 * 32 * 8 * 9
    r = flops.graph_flops(onnx_dir / "hyper_mean.onnx", h, w)
    assert r["macs"] == hand and r["flops"] == 2 * hand
    assert r["macs_per_pixel"] == pytest.approx(hand / (h * w))
    assert r["mac_nodes"] == 3
    # the integer scale net has the same architecture as h_s_mean here
    sn = flops.scale_net_macs(flops.tables_weight_shapes(onnx_dir / "tables.safetensors"), h, w)
    assert sn["macs"] == hand
    # a whole model: every graph counted, counts scale with the area, sizes are padded to 64
    m = flops.model_flops(onnx_dir, h, w)
    assert m["forward"]["macs"] > 0 and m["inverse"]["macs"] > 0
    assert m["encode"]["macs"] == m["forward"]["macs"] + m["hyper_mean"]["macs"]
    assert flops.graph_flops(onnx_dir / "forward.onnx", 2 * h, w)["macs"] == 2 * m["forward"]["macs"]
    assert flops.graph_flops(onnx_dir / "forward.onnx", h - 5, w - 7)["macs"] == m["forward"]["macs"]


def test_graph_flops_single_conv_and_matmul(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((5, 3, 3, 3), np.float32), "w")
    wt = numpy_helper.from_array(np.zeros((5, 2, 2, 2), np.float32), "wt")
    m = numpy_helper.from_array(np.zeros((128, 6), np.float32), "m")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2]),
        helper.make_node("MatMul", ["t", "m"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, wt, m])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    r = flops.graph_flops(path, 64, 128)
    conv = 5 * 32 * 64 * (3 * 3 * 3)  # out numel * Cin*kh*kw
    convt = 5 * 32 * 64 * (2 * 2 * 2)  # in numel * Cout*kh*kw
    mm = (2 * 64 * 6) * 128  # t (1, 2, 64, 128) @ (128, 6): out numel * K
    assert r["by_op"]["Conv"] == conv
    assert r["by_op"]["ConvTranspose"] == convt
    assert r["by_op"]["MatMul"] == mm
    assert r["macs"] == conv + convt + mm and r["flops_per_pixel"] == 2 * r["macs"] / (64 * 128)


def test_bench_backends_smoke(tiny_raw, tiny_export, tmp_path):
    """Raw checkpoint (no tables): the bench finalizes a copy; the export is reused (--onnx)."""
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(imgs / "a.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(imgs / "b.png")
    before = _sha(tiny_raw)
    out = tmp_path / "bench.json"
    res = bench_backends.main(["--ckpt", str(tiny_raw), "--onnx", str(tiny_export[1]), "--images", str(imgs),
                               "--limit", "1", "--threads", "1",
                               "--backends", "torch,ort", "--peak-size", "256", "--json", str(out), "--quiet"])
    assert _sha(tiny_raw) == before, "the input checkpoint must never be modified"
    assert res["warnings"] == []  # the finalized copy is the model that was exported
    assert res["images"] == ["a.png"]
    by = {r["backend"]: r for r in res["results"]}
    assert set(by) == {"torch", "onnxruntime"}
    for r in by.values():
        s = r["summary"]
        assert s["images"] == 1 and s["enc_s"] > 0 and s["dec_s"] > 0
        assert 0 < s["enc_entropy_share"] < 1 and 0 < s["dec_entropy_share"] < 1
        assert s["enc_transform_s"] + s["enc_entropy_s"] <= s["enc_s"] * 1.001
        assert s["enc_gflops"] > 0 and s["enc_pct_peak"] > 0
        assert s["speedup_vs_torch"]["e2e_s"] > 0
    assert by["torch"]["summary"]["speedup_vs_torch"]["e2e_s"] == pytest.approx(1.0)
    assert res["peaks"]["1"]["numpy_gflops"] > 0
    assert res["verdict"] and "ONNX Runtime vs torch" in res["verdict"][0]
    # flops of the 64x64 image (padded 64x64) match the encode count
    img = by["torch"]["images"][0]
    assert img["enc_flops"] == res["flops"]["64x64"]["encode"]["flops"]
    assert json.loads(out.read_text())["results"][0]["backend"] == "torch"
