"""Test helpers for the TensorRT tests.

`export_tiny(dir)`: a tiny random ILC exported by the real exporter (fp32 and fp16 graphs).
`to_fp16(model, keep=())`: a deliberately naive fp32 -> fp16 conversion with no fp32 islands
(or islands only around the ops in `keep`), which is what the precision check must catch;
`tampered_export` puts such graphs into a copy of an export folder.
"""
from __future__ import annotations

import hashlib
import json
import shutil
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


def export_tiny(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random ILC checkpoint exported by the real exporter (fp32 + fp16 graphs)."""
    from conftest import randomize
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.config import tiny_config
    from ilc_reference.model import build_model

    from ilc_export.export.onnx_export import export_onnx

    out_dir = Path(out_dir)
    ckpt = save_checkpoint(randomize(build_model(tiny_config()), seed=seed), out_dir / "ckpt" / "ilc-tiny")
    return export_onnx(ckpt, out_dir / "onnx", fp16=True)


def tampered_export(src: Path, dst: Path, fp16_graphs: dict[str, onnx.ModelProto]) -> Path:
    """Copy an export folder, replacing the fp16 variants of some graphs (manifest kept consistent)."""
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    for graph, model in fp16_graphs.items():
        name = f"{graph}.fp16.onnx"
        onnx.save(model, str(dst / name))
        man["precisions"]["fp16"][graph] = name
        data = (dst / name).read_bytes()
        man["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (dst / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    return dst
