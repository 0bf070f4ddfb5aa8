"""fp32 ONNX graph -> fp16 graph with fp32 islands (for strongly typed TensorRT and fp16 ORT).

The converter is ours (no onnxconverter-common): it walks the graph once in topological
order and decides, per node, the precision it computes in:

* nodes in the *keep* set compute in fp32 (the "fp32 islands"),
* layout/indexing ops (Slice, Gather, Concat, DepthToSpace, ...) follow their data input,
  so they never force a cast,
* every other node computing on floats computes in fp16.

Casts are inserted where a tensor's precision differs from what a consumer needs (one cast
per tensor and target precision, reused by every consumer); constant weights are converted
ahead of time instead (an fp16 copy ``<name>__fp16``; the fp32 original is kept only if an
fp32 node still reads it). Graph inputs and outputs stay float32: the first consumers cast
them down, the producers of the outputs are followed by a Cast back to float32.

Node names of converted nodes are unchanged, so the fp32-island names recorded in the
manifest address the same layers in the fp32 graph (TensorRT 10 weakly typed builds set
layer precision on those names) and in the fp16 graph (strongly typed builds take the
graph as is).

The island policy (``fp32_islands``) for the ILC graphs:

* ``Exp``/``Sigmoid`` and the affine chain between them: the coupling scale path
  ``s = c*(2*sigmoid(h)-1)``, ``exp(s)`` / ``exp(-s)``;
* overflow/precision-prone ops anywhere: Exp, Log, Pow, Sqrt, Reciprocal, Div, Softplus,
  Erf, reductions;
* the baseline's GDN layers entirely (``x*x`` overflows fp16 for |x| > 255);
* the hyper analysis ``h_a`` (its output w is rounded into the bitstream; it runs at 1/16
  resolution, so fp32 costs little);
* the ``hyper_mean`` graph is not converted at all (the fp32 file is used for fp16 too).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..contract.graphs import FP32_GRAPHS  # never converted: the fp32 file serves both precisions
from ..contract.errors import IlcError

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16

#: ops that only move data: they compute in whatever precision their data input has.
LAYOUT_OPS = {
    "Identity", "Slice", "Gather", "GatherElements", "Reshape", "Transpose", "DepthToSpace",
    "SpaceToDepth", "Squeeze", "Unsqueeze", "Flatten", "Split", "Concat", "Expand", "Tile",
}
#: ops whose float output type comes from an attribute and whose inputs are not converted.
TYPED_OPS = {"Cast", "ConstantOfShape", "Shape", "Size"}
#: ops kept in fp32 wherever they occur.
FP32_OPS = {
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Div", "Softplus", "Erf", "Sigmoid",
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Softmax", "LogSoftmax",
}
#: elementwise ops allowed in the scale chain between Sigmoid and Exp.
_CHAIN_OPS = {"Mul", "Sub", "Add", "Neg"}
#: node-name scopes kept in fp32 (the TorchScript exporter names nodes /<module path>/<Op>).
FP32_SCOPES = ("/h_a/",)

FP16_MAX = float(np.finfo(np.float16).max)


class Fp16Error(IlcError, RuntimeError):
    pass


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Turn float Constant nodes (tensor-valued) into initializers, so weights convert ahead of time."""
    g = model.graph
    keep = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    g = inferred.graph
    types = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _is_const(name: str, inits: set[str]) -> bool:
    return name in inits


def fp32_islands(model: onnx.ModelProto, graph_name: str = "") -> list[str]:
    """Names of the nodes that must compute in fp32 (the policy described in the module doc)."""
    g = model.graph
    if graph_name in FP32_GRAPHS:
        return [n.name for n in g.node]
    inits = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    prod = _producers(g)
    keep: set[str] = set()
    scopes = set(FP32_SCOPES)
    for n in g.node:
        if n.op_type in FP32_OPS:
            keep.add(n.name)
        if n.op_type == "Sqrt":  # a GDN layer (baseline): keep the whole layer in fp32
            scopes.add(n.name.rsplit("/", 1)[0] + "/")
        if n.op_type == "Exp":  # walk the coupling's scale chain back to the Sigmoid
            cur = prod.get(n.input[0])
            while cur is not None and cur.op_type in _CHAIN_OPS:
                keep.add(cur.name)
                data = [i for i in cur.input if not _is_const(i, inits)]
                if len(data) != 1:
                    break
                cur = prod.get(data[0])
    for n in g.node:
        if any(n.name.startswith(s) for s in scopes if s != "/"):
            keep.add(n.name)
    # layout and typed ops carry no arithmetic: listing them is noise
    return [n.name for n in g.node if n.name in keep and n.op_type not in LAYOUT_OPS | TYPED_OPS]


def convert_fp16(model: onnx.ModelProto, keep_fp32: set[str] | list[str]) -> onnx.ModelProto:
    """Return an fp16 copy of `model` whose `keep_fp32` nodes compute in fp32; I/O stay float32."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = set(keep_fp32)
    names = [n.name for n in m.graph.node]
    if len(set(names)) != len(names) or "" in names:
        raise Fp16Error("every node needs a unique name for the fp16 conversion")
    missing = keep - set(names)
    if missing:
        raise Fp16Error(f"fp32 island nodes not in the graph: {sorted(missing)[:5]}")
    _constants_to_initializers(m)
    types = _elem_types(m)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    prec: dict[str, int] = {i.name: FLOAT for i in g.input if types.get(i.name) == FLOAT}
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    half_inits: dict[str, str] = {}
    used_fp32_inits: set[str] = set()

    def suffix(p: int) -> str:
        return "fp16" if p == FLOAT16 else "fp32"

    def need(t: str, p: int) -> str:
        if not t or types.get(t) != FLOAT:
            return t
        if t in inits:
            if p == FLOAT:
                used_fp32_inits.add(t)
                return t
            if t not in half_inits:
                arr = numpy_helper.to_array(inits[t]).astype(np.float32)
                if np.abs(arr).max(initial=0.0) > FP16_MAX:
                    raise Fp16Error(f"initializer {t} exceeds the fp16 range; keep its consumer in fp32")
                h = numpy_helper.from_array(arr.astype(np.float16), f"{t}__fp16")
                g.initializer.append(h)
                half_inits[t] = h.name
            return half_inits[t]
        cur = prec[t]
        if cur == p:
            return t
        key = (t, p)
        if key not in casts:
            out = f"{t}__to_{suffix(p)}"
            new_nodes.append(helper.make_node("Cast", [t], [out], to=p, name=f"{t}__Cast_{suffix(p)}"))
            casts[key] = out
        return casts[key]

    for n in list(g.node):
        float_in = [i for i in n.input if i and types.get(i) == FLOAT]
        float_out = [o for o in n.output if types.get(o) == FLOAT]
        if not float_in and not float_out:
            new_nodes.append(n)
            continue
        if n.op_type in TYPED_OPS:
            if n.op_type == "Cast" or n.op_type == "ConstantOfShape":
                for o in float_out:
                    prec[o] = FLOAT
            for idx, t in enumerate(n.input):  # data inputs pass as they are
                if t in inits and types.get(t) == FLOAT:
                    used_fp32_inits.add(t)
            new_nodes.append(n)
            continue
        if n.name in keep:
            p = FLOAT
        elif n.op_type in LAYOUT_OPS:
            data = [prec[i] for i in float_in if i not in inits]
            p = FLOAT if data and all(d == FLOAT for d in data) else FLOAT16
            if n.op_type != "Concat" and data:
                p = data[0]
        else:
            p = FLOAT16
        for idx, t in enumerate(n.input):
            if t in float_in:
                n.input[idx] = need(t, p)
        for o in float_out:
            prec[o] = p
        new_nodes.append(n)

    # graph outputs stay float32
    out_names = {o.name for o in g.output}
    for o in g.output:
        if prec.get(o.name) != FLOAT16:
            continue
        inner = f"{o.name}__fp16"
        existing = casts.get((o.name, FLOAT))  # an fp32 consumer already casts it back: reuse that cast
        rename = {o.name: inner, **({existing: o.name} if existing else {})}
        for n in new_nodes:
            for idx, t in enumerate(n.input):
                if t in rename:
                    n.input[idx] = rename[t]
            for idx, t in enumerate(n.output):
                if t in rename:
                    n.output[idx] = rename[t]
        if not existing:
            new_nodes.append(helper.make_node("Cast", [inner], [o.name], to=FLOAT, name=f"{o.name}__Cast_fp32"))
    assert out_names == {o.name for o in g.output}

    del g.node[:]
    g.node.extend(new_nodes)
    # drop fp32 initializers nobody reads any more
    read = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in read]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    return m


def to_fp16(model: onnx.ModelProto, graph_name: str) -> tuple[onnx.ModelProto, list[str]]:
    """Convert one exported graph; returns (fp16 model, names of the fp32-island nodes)."""
    if graph_name in FP32_GRAPHS:
        raise Fp16Error(f"graph {graph_name!r} stays fp32 (use the fp32 file for fp16 too)")
    keep = fp32_islands(model, graph_name)
    return convert_fp16(model, keep), keep


def precision_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Count of compute nodes by output precision (for reports and tests)."""
    types = _elem_types(model)
    out = {"fp16": 0, "fp32": 0}
    for n in model.graph.node:
        if n.op_type in LAYOUT_OPS | TYPED_OPS:
            continue
        t = types.get(n.output[0]) if n.output else None
        if t == FLOAT16:
            out["fp16"] += 1
        elif t == FLOAT:
            out["fp32"] += 1
    return out
