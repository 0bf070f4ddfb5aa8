"""TensorRT engine builds on CPU with tensorrt-rtx ("CPU-only AOT"): every graph, fp32 and fp16,
for SM86 and SM89; the engine manifest; the fp32-precision check (and that it can fail);
parser errors that name the problem. Engines are not executed here (see test_trt_backend.py).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time

import pytest

trt = pytest.importorskip(
    "tensorrt_rtx",
    reason="tensorrt-rtx-cu12 is not installed (pip install 'ilc-export[rtx]'): TensorRT engine builds not tested",
)
pytest.importorskip("torch", reason="the ONNX export needs torch")
onnx = pytest.importorskip("onnx")

from trt_testutil import export_tiny, tampered_export, to_fp16

from ilc_export.export import trt_build as tb
from ilc_export.backends.tensorrt.flavour import normalise_cc
from ilc_export.export.trt_flavours import BuildFlavour, detect

# a small profile keeps CPU-only builds quick; the shapes scale the same way as the defaults
SMALL = {"min_shape": "64x64", "opt_shape": "128x128", "max_shape": "2x256x256"}
CCS = ("SM86", "SM89")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("trt-export"))


@pytest.fixture(scope="module")
def rtx() -> BuildFlavour:
    return detect("tensorrt_rtx")


def _build(src, out, fp16, **kw):
    events = []
    t = time.perf_counter()
    m = tb.build_engines(src, out, fp16=fp16, compute_capabilities=CCS, progress=events.append,
                         flavour="tensorrt_rtx", **{**SMALL, **kw})
    return m, events, time.perf_counter() - t


@pytest.fixture(scope="module")
def built(export_dir, tmp_path_factory):
    out = {}
    for prec in ("fp32", "fp16"):
        m, events, wall = _build(export_dir, tmp_path_factory.mktemp(f"eng-{prec}"), prec == "fp16")
        out[prec] = (m, events, wall)
    return out


@pytest.mark.parametrize("prec", ["fp32", "fp16"])
def test_every_graph_builds_for_sm86_and_sm89(built, export_dir, rtx, prec):
    mpath, events, wall = built[prec]
    m = json.loads(mpath.read_text())
    onnx_man = json.loads((export_dir / "manifest.json").read_text())
    assert m["format"] == tb.FORMAT and m["flavour"] == "tensorrt_rtx" and m["trt_version"] == rtx.version
    assert m["typing"] == "strong"
    assert m["compute_capabilities"] == ["SM86", "SM89"]
    assert m["precision"] == prec
    assert m["model_id"] == onnx_man["model_id"] and m["config"] == onnx_man["config"]
    assert m["profile"] == {"min": [1, 64, 64], "opt": [1, 128, 128], "max": [2, 256, 256]}
    assert set(m["engines"]) == {"forward", "hyper_mean", "inverse"}
    lines = []
    for g, e in m["engines"].items():
        f = mpath.parent / e["file"]
        assert f.stat().st_size == e["bytes"] > 0
        assert hashlib.sha256(f.read_bytes()).hexdigest() == e["sha256"]
        assert e["onnx"]["sha256"] == onnx_man["files"][e["onnx"]["file"]]["sha256"]
        assert e["build_s"] > 0
        assert e["layers"]["fp32_check"] == "passed"
        assert "no CUDA GPU" in e["layers"]["engine_inspector"] or e["layers"]["engine_inspector"] == "checked"
        want_prec = "fp32" if (prec == "fp32" or g == "hyper_mean") else "fp16"
        assert e["precision"] == want_prec
        lines.append(f"{g} {e['precision']} {e['build_s']:.2f}s {e['bytes'] / 2**20:.2f}MiB")
    # profiles per input follow the image: latents /16, hyper-latents /64
    prof = m["engines"]["inverse"]["profile"]
    c_y, c_z = onnx_man["config"]["latent_channels"], 3 * 4**4 - onnx_man["config"]["latent_channels"]
    assert prof["y_hat"] == {"min": [1, c_y, 4, 4], "opt": [1, c_y, 8, 8], "max": [2, c_y, 16, 16]}
    assert prof["z"]["max"] == [2, c_z, 16, 16]
    assert m["engines"]["hyper_mean"]["profile"]["w_hat"]["min"][2:] == [1, 1]
    assert m["engines"]["forward"]["profile"]["image"]["max"] == [2, 3, 256, 256]
    # codec tables and the export manifest travel with the engines; no temp files left
    assert m["tables"] == "tables.safetensors" and (mpath.parent / "tables.safetensors").is_file()
    assert (mpath.parent / "onnx_manifest.json").is_file()
    assert not [p for p in mpath.parent.iterdir() if p.name.endswith(".tmp")]
    # progress: every graph reported start, builder phases and done
    kinds = {(e["event"], e.get("graph")) for e in events}
    for g in m["engines"]:
        assert ("graph_start", g) in kinds and ("graph_done", g) in kinds and ("phase_start", g) in kinds
    print(f"\n[{prec}] built in {wall:.1f}s: " + "; ".join(lines))


def test_fp16_layers_report(built):
    mpath = built["fp16"][0]
    fwd = json.loads((mpath.parent / "forward.layers.json").read_text())["parsed"]
    assert fwd["ok"] and fwd["counts"].get("fp16", 0) > 0  # really an fp16 network
    must = [r for r in fwd["layers"] if r.get("must_fp32")]
    ops = {r["op"] for r in must}
    assert {"Sigmoid", "Exp"} <= ops
    assert all(r["precision"] == "fp32" for r in must)
    assert not fwd["declared_fp32_unmatched"]  # every island node of the exporter was found
    hm = json.loads((mpath.parent / "hyper_mean.layers.json").read_text())["parsed"]
    assert "fp16" not in hm["counts"] and hm["must_fp32"] > 0


def test_precision_check_fails_without_fp32_islands(export_dir, tmp_path):
    """An fp16 graph whose Exp/Sigmoid run in fp16 must not become an engine."""
    naive = {g: to_fp16(onnx.load(str(export_dir / f"{g}.onnx"))) for g in ("forward", "inverse")}
    bad = tampered_export(export_dir, tmp_path / "naive", naive)
    out = tmp_path / "eng"
    with pytest.raises(tb.PrecisionCheckError) as ei:
        _build(bad, out, True, graphs=["forward"])
    msg = str(ei.value)
    assert "forward" in msg and "Sigmoid" in msg and "Exp" in msg and "fp32 islands" in msg
    assert not (out / "manifest.json").exists() and not (out / "forward.engine").exists()
    # check="warn" builds it anyway and records the failure
    m = json.loads(_build(bad, out, True, graphs=["inverse"], check="warn")[0].read_text())
    assert m["engines"]["inverse"]["layers"]["fp32_check"].startswith("FAILED")


def test_precision_check_fails_when_policy_dropped(export_dir, tmp_path):
    """keep_fp32=False builds hyper_mean from an fp16 graph: the check catches it."""
    bad = tampered_export(export_dir, tmp_path / "hm16",
                          {"hyper_mean": to_fp16(onnx.load(str(export_dir / "hyper_mean.onnx")))})
    with pytest.raises(tb.PrecisionCheckError, match="hyper_mean"):
        _build(bad, tmp_path / "eng", True, graphs=["hyper_mean"], keep_fp32=False)
    # with the policy (default) the fp32 file is used and all is well
    m = json.loads(_build(bad, tmp_path / "eng2", True, graphs=["hyper_mean"])[0].read_text())
    assert m["engines"]["hyper_mean"]["precision"] == "fp32"


def test_island_selection_for_weakly_typed_builds(export_dir, rtx):
    """TensorRT 10 pins the whole scale path sigmoid -> exp; checked on the parsed fp32 network."""
    logger = tb._make_logger(rtx.trt)
    builder = rtx.trt.Builder(logger)
    net, _p = tb.parse_onnx(rtx, builder, logger, export_dir / "forward.onnx", strongly_typed=True)
    must, island = tb.sensitive_layers(rtx, net, "forward")
    names = {net.get_layer(i).name for i in island}
    n_coupling = sum(1 for i in must if rtx.layer_op(net.get_layer(i)) == "Exp")
    assert n_coupling >= 4 and must <= island and len(island) > len(must)
    assert any(n.endswith("/Sub") for n in names) and any("/Mul" in n for n in names)
    assert not any("Conv" in n for n in names)  # the island stops at the scale path
    hm, _p2 = tb.parse_onnx(rtx, builder, logger, export_dir / "hyper_mean.onnx", strongly_typed=True)
    m2, _ = tb.sensitive_layers(rtx, hm, "hyper_mean")
    assert len(m2) == sum(1 for i in range(hm.num_layers) if tb._float_outputs(rtx, hm.get_layer(i)))


def test_truncated_onnx_gives_parser_error(export_dir, tmp_path):
    d = tmp_path / "trunc"
    d.mkdir()
    (d / "hyper_mean.onnx").write_bytes((export_dir / "hyper_mean.onnx").read_bytes()[:2000])
    with pytest.raises(tb.OnnxParseError) as ei:
        _build(d, tmp_path / "eng", False, graphs=["hyper_mean"])
    msg = str(ei.value)
    assert str(d / "hyper_mean.onnx") in msg and "truncated or corrupt" in msg


def test_bad_node_gives_parser_error_naming_the_node(export_dir, tmp_path):
    from onnx import numpy_helper

    m = onnx.load(str(export_dir / "hyper_mean.onnx"))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    init = next(t for t in m.graph.initializer if t.name == conv.input[1])
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(w[:, : max(1, w.shape[1] // 2)].copy(), init.name))  # wrong in-channels
    d = tmp_path / "badnode"
    d.mkdir()
    onnx.save(m, str(d / "hyper_mean.onnx"))
    with pytest.raises(tb.OnnxParseError) as ei:
        _build(d, tmp_path / "eng", False, graphs=["hyper_mean"])
    assert f"node {conv.name!r} (Conv)" in str(ei.value)


def test_changed_onnx_is_refused(export_dir, tmp_path):
    d = tmp_path / "changed"
    shutil.copytree(export_dir, d)
    with open(d / "inverse.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(tb.BuildError, match="does not match the export manifest"):
        _build(d, tmp_path / "eng", False, graphs=["inverse"])


def test_missing_fp16_graphs_and_bad_options(export_dir, tmp_path):
    d = tmp_path / "fp32only"
    d.mkdir()
    for g in ("forward", "hyper_mean", "inverse"):
        shutil.copy(export_dir / f"{g}.onnx", d)
    with pytest.raises(tb.BuildError, match="export with --fp16"):
        _build(d, tmp_path / "e1", True, graphs=["forward"])
    with pytest.raises(tb.BuildError, match="cannot target SM90"):
        tb.build_engines(d, tmp_path / "e2", compute_capabilities=["SM90"], progress=False, flavour="tensorrt_rtx")
    with pytest.raises(tb.BuildError, match="min <= opt <= max"):
        tb.build_engines(d, tmp_path / "e3", min_shape="256x256", opt_shape="128x128", progress=False)
    with pytest.raises(tb.BuildError, match="multiples of 64"):
        tb.build_engines(d, tmp_path / "e4", max_shape="1080x1920", progress=False)


def test_timing_cache_is_noted_as_unsupported_by_rtx(export_dir, tmp_path):
    m = json.loads(_build(export_dir, tmp_path / "eng", False, graphs=["hyper_mean"],
                          timing_cache=tmp_path / "tc.bin")[0].read_text())
    assert "no timing cache" in m["timing_cache"] and not (tmp_path / "tc.bin").exists()


def test_shapes_and_ccs():
    assert tb.parse_shape("1088x1920") == (1, 1088, 1920)
    assert tb.parse_shape("2x64x128") == (2, 64, 128)
    assert tb.parse_shape((128, 64)) == (1, 128, 64)
    with pytest.raises(tb.BuildError):
        tb.parse_shape("64")
    assert tb.input_shape("w_hat", 8, (2, 128, 256)) == (2, 8, 2, 4)
    assert tb.input_shape("z", 752, (1, 64, 64)) == (1, 752, 4, 4)
    assert [normalise_cc(c) for c in ("sm_86", "8.9", 120, "SM75")] == ["SM86", "SM89", "SM120", "SM75"]
    assert tb.parse_size("2G") == 2 << 30 and tb.parse_size("512MiB") == 512 << 20


@pytest.mark.slow
def test_default_model_builds_fp32_and_fp16(tmp_path):
    """The default-size model (shipped weights if present) with the default profile, SM86 + SM89."""
    from conftest import randomize

    from ilc_export.export.onnx_export import export_onnx
    from ilc_export.pipeline.models import ModelNotFound, shipped_checkpoint
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.config import ModelConfig
    from ilc_reference.model import build_model

    try:
        ckpt, what = shipped_checkpoint(), "shipped"
    except ModelNotFound:
        ckpt, what = save_checkpoint(randomize(build_model(ModelConfig())), tmp_path / "ck" / "ilc-default"), "random"
    exp = export_onnx(ckpt, tmp_path / "onnx", fp16=True)
    for prec in ("fp32", "fp16"):
        m = json.loads(tb.build_engines(exp, tmp_path / prec, fp16=prec == "fp16", compute_capabilities=CCS,
                                        progress=False, flavour="tensorrt_rtx").read_text())
        assert m["profile"] == {"min": [1, 64, 64], "opt": [1, 1088, 1920], "max": [1, 2176, 3840]}
        assert all(e["layers"]["fp32_check"] == "passed" for e in m["engines"].values())
        print(f"\n[{what} {ckpt.name} {prec}] " + "; ".join(
            f"{g} {e['precision']} {e['build_s']:.2f}s {e['bytes'] / 2**20:.2f}MiB" for g, e in m["engines"].items()))


def test_fp16_engines_from_an_fp32_export_or_a_checkpoint(tiny_ckpt, tmp_path, monkeypatch):
    """`ilc-export trt --fp16` from a default (fp32-only) export converts the graphs itself (fp32
    islands as the exporter places them); from --ckpt it exports and builds in one go."""
    from typer.testing import CliRunner

    from ilc_export.cli.export_cli import app
    from ilc_export.export.onnx_export import export_onnx

    exp = export_onnx(tiny_ckpt, tmp_path / "m" / "onnx")  # fp32 only
    before = {p.name: p.read_bytes() for p in exp.iterdir()}
    small = ["--min-shape", "64x64", "--opt-shape", "128x128", "--max-shape", "2x256x256", "-c", "SM86",
             "--flavour", "tensorrt_rtx"]
    r = CliRunner().invoke(app, ["trt", "--fp16", "--onnx", str(exp), *small])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m" / "trt-fp16" / "manifest.json").read_text())  # the default: beside onnx/
    assert m["precision"] == "fp16" and "converted" in m["fp16_graphs"]
    assert {g: e["precision"] for g, e in m["engines"].items()} == {
        "forward": "fp16", "hyper_mean": "fp32", "inverse": "fp16"}
    assert all(e["layers"]["fp32_check"] == "passed" for e in m["engines"].values())
    assert {p.name: p.read_bytes() for p in exp.iterdir()} == before  # the export is left as it was
    # a second build into the same folder needs --force
    r = CliRunner().invoke(app, ["trt", "--fp16", "--onnx", str(exp), *small])
    assert r.exit_code == 1 and "--force" in r.output
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["trt", "--fp16", "--ckpt", str(tiny_ckpt), *small])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "engines" / "ilc-tiny" / "trt-fp16" / "manifest.json").read_text())
    assert m["precision"] == "fp16" and m["engines"]["forward"]["precision"] == "fp16"
    assert (tmp_path / "engines" / "ilc-tiny" / "onnx" / "manifest.json").is_file()
