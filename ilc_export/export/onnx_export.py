"""Checkpoint -> ONNX export folder (forward, hyper_mean, inverse graphs + tables + manifest).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. In torch 2.13 it
exports these modules quickly (< 1 s per graph for the tiny model), needs no onnxscript,
maps PixelShuffle to DepthToSpace and the Haar to grouped Conv / ConvTranspose + Gather,
and is deterministic. The dynamo exporter also works (with onnxscript installed) but is ~15x
slower and adds a dependency for no gain here.

Export-only rewrites (``_bake``): each InvConv1x1 becomes a plain 1x1 conv whose forward
weight and inverse weight (``torch.linalg.inv`` in float64, as in the reference) are
precomputed constants, so no ``diag``/``inv`` reaches the graph.

The folder is written to a temporary sibling and renamed into place: a failed export leaves
the previous folder (or nothing) behind, never a half-written one.
"""
from __future__ import annotations

import copy
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from ..contract.encoder_addon import addon_path, read_addon_meta
from ..contract.errors import IlcError
from ..contract.files import sha256_file
from ..contract.geometry import HYPER_DOWNSAMPLE, HYPER_STRIDE, LATENT_STRIDE, LEVELS, PAD_MULTIPLE
from ..contract.graphs import FP32_GRAPHS, GRAPHS
from ..contract.manifest import FORMAT_VERSIONS, ONNX_FORMAT, TABLES_NAME, file_record, write_manifest
from ..contract.model_id import TABLE_PREFIX, model_id_of_file
from ..contract.safetensors import write_safetensors
from . import fp16 as fp16_mod

MIN_OPSET = 17
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: symbolic dimension names used in every graph and in the manifest
DIMS = {
    "batch": "batch size",
    "height": "padded image height (multiple of pad_multiple)",
    "width": "padded image width (multiple of pad_multiple)",
    "lat_h": "height / 2**levels (16)",
    "lat_w": "width / 2**levels (16)",
    "hyp_h": "height / pad_multiple (64)",
    "hyp_w": "width / pad_multiple (64)",
}


class ExportError(IlcError, RuntimeError):
    pass


def default_out_dir(model_name: str) -> Path:
    return PROJECT_ROOT / "engines" / model_name / "onnx"


def graph_io(cfg) -> dict[str, dict[str, list[dict]]]:
    """Per graph: inputs/outputs with dtype and symbolic shape (the manifest's ``graphs``)."""
    m, z, nh = cfg.latent_channels, cfg.z_channels if cfg.kind == "ilc" else 0, cfg.hyper_channels
    shapes = {
        "image": ["batch", 3, "height", "width"],
        "y": ["batch", m, "lat_h", "lat_w"],
        "y_hat": ["batch", m, "lat_h", "lat_w"],
        "mu": ["batch", m, "lat_h", "lat_w"],
        "z": ["batch", z, "lat_h", "lat_w"],
        "w": ["batch", nh, "hyp_h", "hyp_w"],
        "w_hat": ["batch", nh, "hyp_h", "hyp_w"],
    }
    return {
        g: {
            "inputs": [{"name": n, "dtype": "float32", "shape": shapes[n]} for n in ins],
            "outputs": [{"name": n, "dtype": "float32", "shape": shapes[n]} for n in outs],
        }
        for g, (ins, outs) in GRAPHS.items()
    }


# --- torch side -----------------------------------------------------------------------------

def _torch_modules(model, correction=None):
    """The three graphs as nn.Modules over a copy of `model` with baked InvConv1x1 weights;
    `correction` (an encoder add-on) goes into the forward graph only."""
    import torch
    import torch.nn.functional as F
    from ilc_reference.invertible import InvConv1x1
    from torch import nn

    class BakedInvConv1x1(nn.Module):
        def __init__(self, ic: InvConv1x1):
            super().__init__()
            with torch.no_grad():
                w = ic.matrix()
                w_inv = torch.linalg.inv(w.double()).to(w.dtype)
            self.register_buffer("w", w[:, :, None, None].clone())
            self.register_buffer("w_inv", w_inv[:, :, None, None].clone())

        def forward(self, x):
            return F.conv2d(x, self.w)

        def inverse(self, y):
            return F.conv2d(y, self.w_inv)

    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList):
            for i, child in enumerate(mod):
                if isinstance(child, InvConv1x1):
                    mod[i] = BakedInvConv1x1(child)

    class Forward(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.correction = None if correction is None else copy.deepcopy(correction).eval()

        def forward(self, image):
            return self.model.forward_graph(image, self.correction)

    class HyperMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, w_hat):
            return self.model.hyper_mean(w_hat)

    class Inverse(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, y_hat, z):
            return self.model.synthesis(y_hat, z)

    return {"forward": Forward(), "hyper_mean": HyperMean(), "inverse": Inverse()}


def _example_inputs(cfg, graph: str, size: int = 128):
    import torch

    g = torch.Generator().manual_seed(0)
    lat = size // LATENT_STRIDE
    z_ch = cfg.z_channels if cfg.kind == "ilc" else 0
    if graph == "forward":
        return (torch.rand(1, 3, size, size, generator=g),)
    if graph == "hyper_mean":
        return (torch.randn(1, cfg.hyper_channels, size // HYPER_STRIDE, size // HYPER_STRIDE, generator=g),)
    return (torch.randn(1, cfg.latent_channels, lat, lat, generator=g), torch.randn(1, z_ch, lat, lat, generator=g))


def _torch_export(module, args, graph: str, opset: int):
    import onnx
    import torch

    ins, outs = GRAPHS[graph]
    axes = {n: {0: "batch", 2: "height", 3: "width"} for n in (*ins, *outs)}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                module, args, buf,
                input_names=list(ins), output_names=list(outs), dynamic_axes=axes,
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
    return onnx.load_from_string(buf.getvalue())


# --- onnx side ------------------------------------------------------------------------------

def _set_io(model, graph: str, io_spec: dict) -> None:
    """Give every graph input/output our symbolic dims; re-add inputs the exporter dropped."""
    from onnx import TensorProto, helper

    g = model.graph

    def vi(spec):
        return helper.make_tensor_value_info(spec["name"], TensorProto.FLOAT, spec["shape"])

    new_inputs = [vi(s) for s in io_spec["inputs"]]  # unused inputs (baseline's z) come back too
    extra = [i for i in g.input if i.name not in {s["name"] for s in io_spec["inputs"]}]
    if extra:
        raise ExportError(f"{graph}: unexpected graph inputs {[i.name for i in extra]}")
    del g.input[:]
    g.input.extend(new_inputs)
    outs = [o.name for o in g.output]
    if outs != [s["name"] for s in io_spec["outputs"]]:
        raise ExportError(f"{graph}: outputs {outs}, expected {[s['name'] for s in io_spec['outputs']]}")
    del g.output[:]
    g.output.extend(vi(s) for s in io_spec["outputs"])


def _finish(model, graph: str, io_spec: dict, opset: int, meta: dict):
    """Slim, fix I/O types, annotate shapes, name nodes, check; returns the final ModelProto."""
    import onnx
    import onnxslim

    model = onnxslim.slim(model)
    if model is None:
        raise ExportError(f"{graph}: onnxslim failed")
    _set_io(model, graph, io_spec)
    g = model.graph
    # unique, stable node names (the fp32 island list refers to them)
    seen: dict[str, int] = {}
    for i, n in enumerate(g.node):
        name = n.name or f"/{n.op_type}_{i}"
        if name in seen:
            seen[name] += 1
            name = f"{name}__{seen[name]}"
        seen.setdefault(name, 0)
        n.name = name
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    del model.metadata_props[:]
    for k, v in sorted(meta.items()):
        model.metadata_props.add(key=k, value=str(v))
    model.producer_name = "ilc-export"
    model.producer_version = _version("ilc-export")
    model.doc_string = f"ILC {graph} graph"
    model.graph.name = graph
    _check(model, graph, opset)
    return model


def _check(model, graph: str, opset: int) -> None:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"{graph}: onnx.checker failed: {e}") from e
    ver = {o.domain: o.version for o in model.opset_import}.get("", 0)
    if ver < MIN_OPSET:
        raise ExportError(f"{graph}: opset {ver} < {MIN_OPSET}")


def _serialize(model) -> bytes:
    return model.SerializeToString(deterministic=True)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _write_tables(ckpt: Path, out: Path, cfg, model_id: str) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="numpy") as f:
        keys = sorted(k for k in f.keys() if k.startswith(TABLE_PREFIX))
        tensors = {k: f.get_tensor(k) for k in keys}
        meta = dict(f.metadata() or {})
    meta = {k: v for k, v in meta.items() if k in ("config", "info")}
    meta.setdefault("config", cfg.to_json())
    meta["model_id"] = model_id
    write_safetensors(out, tensors, meta)
    return keys


# --- public API -----------------------------------------------------------------------------

def export_onnx(
    ckpt: Path,
    out_dir: Path | None = None,
    opset: int = 17,
    fp16: bool = False,
    progress: Callable[[str], None] | None = None,
    encoder_addon: bool = True,
) -> Path:
    """Export a checkpoint's forward / hyper_mean / inverse graphs to `out_dir`.

    Writes forward.onnx, hyper_mean.onnx, inverse.onnx (+ forward.fp16.onnx and
    inverse.fp16.onnx with ``fp16=True``), tables.safetensors and manifest.json. Default
    `out_dir`: engines/<model name>/onnx. Returns the folder. `progress` is called with a
    short message before each step. With `encoder_addon` (the default), the checkpoint's
    encoder add-on, where one sits next to it, goes into the forward graph; the manifest says
    which (``encoder_addon``). The other graphs and the tables never depend on it.
    """
    import onnx
    import torch
    from ilc_reference.checkpoint import load_model
    from ilc_reference.encoder_addon import addon_for

    say = progress or (lambda msg: None)
    ckpt = Path(ckpt)
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; ILC graphs need opset >= {MIN_OPSET}")
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    say(f"loading {ckpt.name}")
    ckpt_sha = sha256_file(ckpt)
    model = load_model(ckpt)
    cfg = model.cfg
    model_id = model_id_of_file(ckpt)
    if sha256_file(ckpt) != ckpt_sha:
        raise ExportError(f"{ckpt} changed while it was being exported; copy it somewhere stable first")
    correction = addon_for(ckpt, model_id) if encoder_addon else None
    addon_record = None
    if correction is not None:
        ap = addon_path(ckpt)
        say(f"encoder add-on {ap.name}")
        addon_record = {"file": ap.name, "sha256": sha256_file(ap), **read_addon_meta(ap, model_id)}
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(cfg.name)
    io_specs = graph_io(cfg)
    meta = {"ilc.model_id": model_id, "ilc.model_name": cfg.name}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        modules = _torch_modules(model, correction)
        fp32_models = {}
        precisions: dict[str, dict] = {"fp32": {}}
        for graph, module in modules.items():
            say(f"exporting {graph}")
            raw = _torch_export(module, _example_inputs(cfg, graph), graph, opset)
            m = _finish(raw, graph, io_specs[graph], opset, {**meta, "ilc.graph": graph, "ilc.precision": "fp32"})
            fp32_models[graph] = m
            name = f"{graph}.onnx"
            (tmp / name).write_bytes(_serialize(m))
            precisions["fp32"][graph] = name
        fp32_islands: dict[str, list[str]] = {}
        if fp16:
            precisions["fp16"] = {}
            for graph, m in fp32_models.items():
                if graph in FP32_GRAPHS:
                    precisions["fp16"][graph] = f"{graph}.onnx"
                    fp32_islands[graph] = ["*"]
                    continue
                say(f"converting {graph} to fp16")
                m16, keep = fp16_mod.to_fp16(m, graph)
                for p in m16.metadata_props:
                    if p.key == "ilc.precision":
                        p.value = "fp16"
                m16.metadata_props.add(key="ilc.fp32_nodes", value=json.dumps(keep))
                _check(m16, f"{graph} (fp16)", opset)
                name = f"{graph}.fp16.onnx"
                (tmp / name).write_bytes(_serialize(m16))
                precisions["fp16"][graph] = name
                fp32_islands[graph] = keep
        say("writing tables and manifest")
        table_keys = _write_tables(ckpt, tmp / TABLES_NAME, cfg, model_id)
        files = {p.name: file_record(p) for p in sorted(tmp.iterdir())}
        manifest = {
            "format": ONNX_FORMAT,
            "format_version": FORMAT_VERSIONS[ONNX_FORMAT],
            "model_id": model_id,
            "model_name": cfg.name,
            "kind": cfg.kind,
            "config": json.loads(cfg.to_json()),  # optional fields (g) only where set: old manifests unchanged
            "pad_multiple": PAD_MULTIPLE,
            "levels": LEVELS,
            "hyper_downsample": HYPER_DOWNSAMPLE,
            "opset": opset,
            "dims": DIMS,
            "graphs": io_specs,
            "precisions": precisions,
            "fp16": {
                "fp32_islands": fp32_islands,
                "policy": "coupling sigmoid->exp scale path, Exp/Log/Sqrt/Div/Pow/reductions, GDN layers, h_a "
                          "and the whole hyper_mean graph stay fp32; graph inputs/outputs are float32",
            } if fp16 else None,
            "tables": {"file": TABLES_NAME, "keys": table_keys},
            "source": {"checkpoint": ckpt.name, "path": str(ckpt.resolve()), "sha256": ckpt_sha},
            "encoder_addon": addon_record,  # in the forward graph only; null: y as the model's analysis gives it
            "exporter": {
                "method": "torch.onnx.export(dynamo=False) + onnxslim",
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxslim": _version("onnxslim"),
                "ilc_export": _version("ilc-export"),
            },
            "files": files,
        }
        write_manifest(tmp, manifest)
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out_dir}")
    return out_dir


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move `tmp` to `out_dir`, replacing a previous export (rename, never a partial copy)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rmdir(old)
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        if old is not None:
            old.rename(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["DIMS", "ExportError", "default_out_dir", "export_onnx", "graph_io"]
