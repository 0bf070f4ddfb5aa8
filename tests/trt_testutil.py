"""Test helpers for the TensorRT tests: tiny ONNX graphs made here, independent of the exporter.

`export_tiny(out_dir)` writes forward/hyper_mean/inverse.onnx of a tiny random ILC, their fp16
variants (``<graph>.fp16.onnx``: fp16 weights and activations, fp32 islands around Exp and
Sigmoid, fp32 I/O) and a manifest.json in the exporter's spirit. `to_fp16(model, keep=())`
converts with no islands at all, which is what the precision check must catch.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

ISLAND_OPS = ("Exp", "Sigmoid")


def _uniq(names: set[str], base: str) -> str:
    n, i = base, 0
    while n in names:
        i += 1
        n = f"{base}_{i}"
    names.add(n)
    return n


def to_fp16(model: onnx.ModelProto, keep: tuple[str, ...] = ISLAND_OPS) -> onnx.ModelProto:
    """fp32 graph -> fp16 graph with fp32 I/O; nodes whose op_type is in `keep` run in fp32."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    names = {o for n in g.node for o in list(n.input) + list(n.output)} | {i.name for i in g.input} | {
        o.name for o in g.output
    } | {t.name for t in g.initializer}
    nodes: list[onnx.NodeProto] = []
    # graph inputs: fp32 in, cast to fp16 at the door
    rename_in: dict[str, str] = {}
    for inp in g.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            new = _uniq(names, inp.name + "_fp16")
            rename_in[inp.name] = new
            nodes.append(helper.make_node("Cast", [inp.name], [new], to=TensorProto.FLOAT16, name=f"cast_in_{inp.name}"))
    out_names = {o.name for o in g.output}
    rename_out = {o: _uniq(names, o + "_fp16") for o in out_names}
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float16"), t.name))
    for n in g.node:
        n = onnx.NodeProto.FromString(n.SerializeToString())
        for i, x in enumerate(n.input):
            if x in rename_in:
                n.input[i] = rename_in[x]
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float16"), a.t.name))
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
        if n.op_type in keep:  # fp32 island: cast in, run fp32, cast back
            for i, x in enumerate(n.input):
                c = _uniq(names, f"{x}_fp32")
                nodes.append(helper.make_node("Cast", [x], [c], to=TensorProto.FLOAT, name=f"{n.name}_cast_in{i}"))
                n.input[i] = c
            casts = []
            for i, o in enumerate(list(n.output)):
                c = _uniq(names, f"{o}_fp32")
                n.output[i] = c
                casts.append(helper.make_node("Cast", [c], [o], to=TensorProto.FLOAT16, name=f"{n.name}_cast_out{i}"))
            nodes.append(n)
            nodes.extend(casts)
            continue
        nodes.append(n)
    for n in nodes:
        for i, o in enumerate(n.output):
            if o in rename_out:
                n.output[i] = rename_out[o]
        for i, x in enumerate(n.input):
            if x in rename_out:
                n.input[i] = rename_out[x]
    for o in out_names:
        nodes.append(helper.make_node("Cast", [rename_out[o]], [o], to=TensorProto.FLOAT, name=f"cast_out_{o}"))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def _freeze_invconv(model):
    """Replace the LU-parametrised 1x1 convs by constant weights (linalg.inv does not export)."""
    import torch
    import torch.nn.functional as F

    from ilc_reference.invertible import InvConv1x1

    for mod in model.modules():
        if isinstance(mod, InvConv1x1):
            with torch.no_grad():
                w = mod.matrix()
                wi = torch.linalg.inv(w.double()).float()
            mod.register_buffer("_w", w[:, :, None, None].clone())
            mod.register_buffer("_wi", wi[:, :, None, None].clone())
            mod.forward = types.MethodType(lambda self, x: F.conv2d(x, self._w), mod)
            mod.inverse = types.MethodType(lambda self, y: F.conv2d(y, self._wi), mod)


def export_tiny(out_dir: Path, seed: int = 0, fp16: bool = True) -> Path:
    """Write a tiny random ILC's three graphs (+ fp16 variants) and a manifest into out_dir."""
    import hashlib
    import warnings

    import torch

    from ilc_reference.config import tiny_config
    from ilc_reference.model import build_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = tiny_config()
    m = build_model(cfg).eval()
    # non-zero last convs so the couplings do something
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    _freeze_invconv(m)

    class Fwd(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            y, z = self.m.analysis(image)
            return y, z, self.m.h_a(y)

    class HM(Fwd):
        def forward(self, w_hat):
            return self.m.hyper_mean(w_hat)

    class Inv(Fwd):
        def forward(self, y_hat, z):
            return self.m.synthesis(y_hat, z)

    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y, z = m.analysis(x)
        w = m.h_a(y)
    graphs = {}
    for name, mod, args, ins, outs in [
        ("forward", Fwd(m), (x,), ["image"], ["y", "z", "w"]),
        ("hyper_mean", HM(m), (w,), ["w_hat"], ["mu"]),
        ("inverse", Inv(m), (y, z), ["y_hat", "z"], ["image"]),
    ]:
        dyn = {n: {0: "batch", 2: "height", 3: "width"} for n in ins + outs}
        path = out_dir / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(mod, args, str(path), input_names=ins, output_names=outs, dynamic_axes=dyn,
                              opset_version=17, dynamo=False)
        files = {"fp32": path.name}
        if fp16:
            p16 = out_dir / f"{name}.fp16.onnx"
            onnx.save(to_fp16(onnx.load(str(path))), str(p16))
            files["fp16"] = p16.name
        graphs[name] = {
            "inputs": ins,
            "outputs": outs,
            "files": files,
            "sha256": {k: hashlib.sha256((out_dir / v).read_bytes()).hexdigest() for k, v in files.items()},
        }
    manifest = {
        "model_id": "tiny" + "0" * 12,
        "config": json.loads(cfg.to_json()),
        "opset": 17,
        "graphs": graphs,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir
