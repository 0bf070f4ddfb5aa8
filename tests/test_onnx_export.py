"""ONNX export: checker-clean graphs, manifest, determinism, atomic writes, fp16 islands."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxslim")
torch = pytest.importorskip("torch")

from ilc_reference.config import PAD_MULTIPLE
from test_onnx_fixtures import tiny_checkpoint, tiny_export

from ilc_export.contract.graphs import GRAPHS
from ilc_export.export import fp16 as fp16_mod
from ilc_export.contract.files import sha256_file
from ilc_export.contract.manifest import read_manifest
from ilc_export.contract.model_id import model_id_of_file
from ilc_export.export.onnx_export import ExportError, export_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return tiny_export(tmp_path_factory, "ilc")


def _graph_files(folder: Path) -> dict[str, Path]:
    man = read_manifest(folder)
    return {f"{g}:{p}": folder / name for p, gs in man["precisions"].items() for g, name in gs.items()}


def test_graphs_are_checker_clean_with_named_dynamic_io(exported):
    _, folder = exported
    for key, path in _graph_files(folder).items():
        graph = key.split(":")[0]
        m = onnx.load(str(path))
        onnx.checker.check_model(m, full_check=True)
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
        assert {o.domain: o.version for o in m.opset_import}[""] >= 17
        ins, outs = GRAPHS[graph]
        assert [i.name for i in m.graph.input] == list(ins)
        assert [o.name for o in m.graph.output] == list(outs)
        for vi in list(m.graph.input) + list(m.graph.output):
            tt = vi.type.tensor_type
            assert tt.elem_type == onnx.TensorProto.FLOAT, (key, vi.name)  # fp16 graphs too: fp32 I/O
            dims = tt.shape.dim
            assert dims[0].dim_param == "batch"
            assert dims[2].dim_param and dims[3].dim_param  # dynamic spatial axes
        ops = {n.op_type for n in m.graph.node}
        assert not ops & {"Inverse", "Diag"}  # InvConv1x1 inverse baked as a constant
        if graph == "hyper_mean":
            assert "DepthToSpace" in ops


def test_manifest_content(exported):
    ckpt, folder = exported
    man = read_manifest(folder)
    assert man["model_id"] == model_id_of_file(ckpt)
    assert man["model_name"] == "ilc-tiny"
    assert man["pad_multiple"] == PAD_MULTIPLE
    assert man["config"]["latent_channels"] == 16
    assert man["opset"] >= 17
    assert set(man["graphs"]) == set(GRAPHS)
    assert man["graphs"]["forward"]["outputs"][1] == {"name": "z", "dtype": "float32", "shape": ["batch", 768 - 16, "lat_h", "lat_w"]}
    for k in ("torch", "onnx", "onnxslim"):
        assert man["exporter"][k]
    for name, f in man["files"].items():
        assert sha256_file(folder / name) == f["sha256"]
    assert set(man["files"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    # the tables are the checkpoint's tables.* tensors
    from safetensors.numpy import load_file

    src = {k: v for k, v in load_file(str(ckpt)).items() if k.startswith("tables.")}
    got = load_file(str(folder / "tables.safetensors"))
    assert sorted(got) == sorted(src) == man["tables"]["keys"]
    for k in src:
        np.testing.assert_array_equal(got[k], src[k])
    assert not list(folder.parent.glob(".export.*"))  # no temp folders left behind


def test_export_is_byte_identical(exported, tmp_path):
    ckpt, folder = exported
    again = export_onnx(ckpt, tmp_path / "again", fp16=True)
    a = {p.name: p.read_bytes() for p in folder.iterdir()}
    b = {p.name: p.read_bytes() for p in again.iterdir()}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"{name} differs between two exports"


def test_fp16_islands(exported):
    _, folder = exported
    man = read_manifest(folder)
    islands = man["fp16"]["fp32_islands"]
    assert islands["hyper_mean"] == ["*"] and man["precisions"]["fp16"]["hyper_mean"] == "hyper_mean.onnx"
    for graph in ("forward", "inverse"):
        f32 = onnx.load(str(folder / f"{graph}.onnx"))
        f16 = onnx.load(str(folder / f"{graph}.fp16.onnx"))
        keep = set(islands[graph])
        ops32 = {n.name: n.op_type for n in f32.graph.node}
        assert keep <= set(ops32)  # names address the same layers in both graphs
        inferred = onnx.shape_inference.infer_shapes(f16)
        types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        by_name = {n.name: n for n in f16.graph.node}
        for name in keep:
            assert types[by_name[name].output[0]] == onnx.TensorProto.FLOAT
        for n in f16.graph.node:
            if n.op_type in ("Exp", "Sigmoid"):
                assert n.name in keep
                assert types[n.output[0]] == onnx.TensorProto.FLOAT
        convs = [n for n in f16.graph.node if n.op_type == "Conv" and n.name not in keep]
        assert convs and all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in convs)
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in f16.graph.initializer)
        assert fp16_mod.precision_summary(f16)["fp16"] > fp16_mod.precision_summary(f16)["fp32"]
        meta = {p.key: p.value for p in f16.metadata_props}
        assert json.loads(meta["ilc.fp32_nodes"]) == islands[graph]


def test_failed_export_leaves_previous_folder_intact(exported, tmp_path, monkeypatch):
    ckpt, folder = exported
    out = tmp_path / "onnx"
    shutil.copytree(folder, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(fp16_mod, "to_fp16", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(ckpt, out, fp16=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(ckpt, tmp_path / "fresh", fp16=True)
    assert not (tmp_path / "fresh").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ExportError, match="opset"):
        export_onnx(tmp_path / "x.safetensors", tmp_path / "o", opset=13)
    with pytest.raises(FileNotFoundError):
        export_onnx(tmp_path / "missing.safetensors", tmp_path / "o")


def test_baseline_exports_with_empty_z(tmp_path):
    ckpt = tiny_checkpoint(tmp_path, "baseline")
    folder = export_onnx(ckpt, tmp_path / "onnx")
    man = read_manifest(folder)
    assert man["kind"] == "baseline" and "fp16" not in man["precisions"]
    inv = onnx.load(str(folder / "inverse.onnx"))
    assert [i.name for i in inv.graph.input] == ["y_hat", "z"]  # unused z kept for a uniform interface
    assert man["graphs"]["inverse"]["inputs"][1]["shape"][1] == 0


def test_cli_onnx(exported, tmp_path):
    from typer.testing import CliRunner

    from ilc_export.cli.export_cli import app

    ckpt, folder = exported
    res = CliRunner().invoke(app, ["onnx", "--ckpt", str(ckpt), "--out", str(tmp_path / "cli"), "--opset", "17"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "manifest.json").exists() and not (tmp_path / "cli" / "forward.fp16.onnx").exists()
    assert (tmp_path / "cli" / "forward.onnx").read_bytes() == (folder / "forward.onnx").read_bytes()
    res = CliRunner().invoke(app, ["onnx", "--ckpt", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "not found" in res.output
