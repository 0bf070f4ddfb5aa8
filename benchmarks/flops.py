"""MACs / FLOPs per pixel of the exported graphs, counted from the ONNX graphs themselves.

    python benchmarks/flops.py engines/ilc-default/onnx            # export folder: all graphs
    python benchmarks/flops.py forward.onnx --size 768x512         # one graph
    python benchmarks/flops.py --ckpt model.safetensors --json flops.json

How it counts: the graph's symbolic input dims (batch, height, width, lat_h, ...) are fixed
to one image of the given (padded) size, ONNX shape inference gives every tensor's shape,
and each node is counted as

    Conv           MACs = numel(output) * (C_in / group) * kH * kW
    ConvTranspose  MACs = numel(input)  * (C_out / group) * kH * kW
    MatMul         MACs = numel(output) * K
    Gemm           MACs = M * N * K

FLOPs = 2 * MACs (one multiply + one add). Bias adds are not counted. Elementwise ops
(Add, Mul, Sigmoid, Exp, LeakyRelu, ...) are reported separately as one op per output
element; data movement (Slice, Concat, Gather, DepthToSpace) is not counted. Per-pixel
numbers divide by the padded image area (H * W, multiples of 64).

The integer scale network is not an ONNX graph (the codec core runs it in float64 BLAS,
exactly); its MACs come from the codec tables' weight shapes (three 3x3 convs at
H/64, H/32, H/16 with depth-to-space in between).

No dependency beyond ``onnx`` (and numpy / safetensors for the tables).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ilc_export.contract.graphs import GRAPH_NAMES

#: ops counted as one operation per output element
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Pow",
    "Relu", "LeakyRelu", "PRelu", "Clip", "Min", "Max", "Erf", "Softplus", "Reciprocal",
    "HardSigmoid", "Round", "Floor", "Ceil", "Where",
}
MAC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _padded(height: int, width: int) -> tuple[int, int]:
    from ilc_export.contract.geometry import padded_size

    return padded_size(height, width)


def dim_values(height: int, width: int, batch: int = 1) -> dict[str, int]:
    """Concrete value of every symbolic dim the exporter uses (see onnx_export.DIMS)."""
    from ilc_export.contract.geometry import HYPER_DOWNSAMPLE, LEVELS

    s = 2**LEVELS
    return {
        "batch": batch, "height": height, "width": width,
        "lat_h": height // s, "lat_w": width // s,
        "hyp_h": height // (s * HYPER_DOWNSAMPLE), "hyp_w": width // (s * HYPER_DOWNSAMPLE),
    }


def _fix_dims(value_infos, dims: dict[str, int]) -> None:
    for vi in value_infos:
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                if d.dim_param not in dims:
                    raise ValueError(f"tensor {vi.name!r} has unknown symbolic dim {d.dim_param!r}")
                d.dim_value = dims[d.dim_param]


def _shapes(model) -> dict[str, tuple[int, ...] | None]:
    """name -> concrete shape (None where shape inference left a dim unknown)."""
    out: dict[str, tuple[int, ...] | None] = {}
    for init in model.graph.initializer:
        out[init.name] = tuple(int(x) for x in init.dims)
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            out.setdefault(vi.name, None)
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out[vi.name] = None if any(d is None for d in dims) else tuple(dims)
    for node in model.graph.node:  # Constant nodes (weights folded as constants)
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = tuple(int(x) for x in a.t.dims)
    return out


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _numel(shape) -> int:
    return int(math.prod(shape))


def node_macs(node, shapes: dict) -> int:
    """MACs of one Conv / ConvTranspose / MatMul / Gemm node (0 for anything else)."""
    op = node.op_type
    if op not in MAC_OPS:
        return 0

    def need(name):
        s = shapes.get(name)
        if s is None:
            raise ValueError(f"{op} node {node.name or node.output[0]!r}: shape of {name!r} is unknown "
                             "after shape inference")
        return s

    if op == "Conv":
        w = need(node.input[1])  # (C_out, C_in / group, kH, kW)
        return _numel(need(node.output[0])) * _numel(w[1:])
    if op == "ConvTranspose":
        w = need(node.input[1])  # (C_in, C_out / group, kH, kW)
        return _numel(need(node.input[0])) * _numel(w[1:])
    if op == "MatMul":
        a = need(node.input[0])
        return _numel(need(node.output[0])) * int(a[-1])
    # Gemm: Y(M, N) = A' B' with A' (M, K)
    a = need(node.input[0])
    k = a[0] if _attr(node, "transA", 0) else a[1]
    return _numel(need(node.output[0])) * int(k)


def graph_flops(onnx_path: str | Path, height: int, width: int, batch: int = 1) -> dict:
    """MACs / FLOPs of one ONNX graph for one image of height x width (padded to 64).

    Returns {"graph", "height", "width", "pixels", "macs", "flops", "macs_per_pixel",
    "flops_per_pixel", "elementwise", "elementwise_per_pixel", "by_op", "mac_nodes"};
    by_op maps op type -> MACs. Raises ValueError if a counted node's shape is unknown.
    """
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    h, w = _padded(height, width)
    dims = dim_values(h, w, batch)
    del model.graph.value_info[:]
    _fix_dims(model.graph.input, dims)
    _fix_dims(model.graph.output, dims)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes = _shapes(model)
    by_op: dict[str, int] = {}
    elementwise = 0
    mac_nodes = 0
    for node in model.graph.node:
        if node.op_type in MAC_OPS:
            m = node_macs(node, shapes)
            by_op[node.op_type] = by_op.get(node.op_type, 0) + m
            mac_nodes += 1
        elif node.op_type in ELEMENTWISE:
            s = shapes.get(node.output[0])
            if s is not None:
                elementwise += _numel(s)
    macs = sum(by_op.values())
    graph = next((p.value for p in model.metadata_props if p.key == "ilc.graph"), onnx_path.stem.split(".")[0])
    pixels = batch * h * w
    return {
        "graph": graph, "file": str(onnx_path), "height": h, "width": w, "pixels": pixels,
        "macs": macs, "flops": 2 * macs, "macs_per_pixel": macs / pixels, "flops_per_pixel": 2 * macs / pixels,
        "elementwise": elementwise, "elementwise_per_pixel": elementwise / pixels,
        "by_op": by_op, "mac_nodes": mac_nodes,
    }


def scale_net_macs(weight_shapes: list[tuple[int, ...]], height: int, width: int) -> dict:
    """MACs of the integer scale network (3x3 convs, depth-to-space x2 between layers).

    weight_shapes: the three (C_out, C_in, 3, 3) shapes (CodecTables.weights[i].shape).
    Layer i runs at (H/64 * 2**i) x (W/64 * 2**i).
    """
    h, w = _padded(height, width)
    d = dim_values(h, w)
    macs = 0
    for i, s in enumerate(weight_shapes):
        macs += (d["hyp_h"] << i) * (d["hyp_w"] << i) * _numel(s)
    return {"graph": "scale_net (int)", "height": h, "width": w, "pixels": h * w,
            "macs": macs, "flops": 2 * macs, "macs_per_pixel": macs / (h * w), "flops_per_pixel": 2 * macs / (h * w),
            "elementwise": 0, "elementwise_per_pixel": 0.0, "by_op": {"Conv": macs}, "mac_nodes": len(weight_shapes)}


def tables_weight_shapes(tables_file: str | Path) -> list[tuple[int, ...]]:
    """Shapes of the integer scale net's weights in a tables / checkpoint safetensors file."""
    from safetensors import safe_open

    with safe_open(str(tables_file), framework="numpy") as f:
        keys = sorted(k for k in f.keys() if k.startswith("tables.hs.weight"))  # noqa: SIM118
        if len(keys) != 3:
            raise ValueError(f"{tables_file}: expected 3 tables.hs.weight* tensors, found {keys}")
        return [tuple(f.get_slice(k).get_shape()) for k in keys]


def model_flops(export_dir: str | Path, height: int, width: int) -> dict[str, dict]:
    """graph_flops of forward / hyper_mean / inverse (fp32 files) + the integer scale net,
    plus 'encode' (forward + hyper_mean) and 'decode' (hyper_mean + inverse) sums."""
    export_dir = Path(export_dir)
    out = {g: graph_flops(export_dir / f"{g}.onnx", height, width) for g in GRAPH_NAMES}
    tables = export_dir / "tables.safetensors"
    if tables.is_file():
        out["scale_net"] = scale_net_macs(tables_weight_shapes(tables), height, width)
    for name, parts in (("encode", ("forward", "hyper_mean")), ("decode", ("hyper_mean", "inverse"))):
        s = {k: sum(out[p][k] for p in parts) for k in ("macs", "flops", "elementwise")}
        px = out["forward"]["pixels"]
        out[name] = {"graph": f"{name} = {' + '.join(parts)}", "height": out["forward"]["height"],
                     "width": out["forward"]["width"], "pixels": px, **s, "macs_per_pixel": s["macs"] / px,
                     "flops_per_pixel": s["flops"] / px, "elementwise_per_pixel": s["elementwise"] / px,
                     "mac_nodes": sum(out[p]["mac_nodes"] for p in parts)}
    return out


def flops_table(results: dict[str, dict], title: str = ""):
    """A rich Table of model_flops / graph_flops results."""
    from rich.table import Table

    t = Table(title=title or None, caption="FLOPs = 2 x MACs; scale_net (int) runs in the entropy coder "
                                           "(float64 BLAS), not in the transform graphs")
    for col in ("graph", "GMACs / image", "MACs / pixel", "FLOPs / pixel", "elementwise / pixel", "MAC nodes"):
        t.add_column(col, justify="left" if col == "graph" else "right")
    for name, r in results.items():
        t.add_row(r["graph"] if name in ("encode", "decode", "scale_net") else name,
                  f"{r['macs'] / 1e9:.3f}", f"{r['macs_per_pixel']:,.0f}", f"{r['flops_per_pixel']:,.0f}",
                  f"{r['elementwise_per_pixel']:,.1f}", str(r["mac_nodes"]))
    return t


def _parse_size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 512x768, got {s!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", nargs="?", help="export folder (manifest.json, *.onnx) or one .onnx file")
    ap.add_argument("--ckpt", help="checkpoint to export first (to a temp folder; a copy gets tables if it lacks them)")
    ap.add_argument("--size", type=_parse_size, default=(512, 768), help="image HxW (default 512x768)")
    ap.add_argument("--json", help="write the counts here")
    args = ap.parse_args(argv)
    if not args.onnx and not args.ckpt:
        ap.error("give an export folder / .onnx file, or --ckpt")
    from rich.console import Console

    h, w = args.size
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ilc-flops-") as tmp:
        src = Path(args.onnx) if args.onnx else None
        if src is None:
            from ilc_export.export.prepare import prepare_models

            _, src, _ = prepare_models(Path(args.ckpt), None, Path(tmp), say=lambda m: print(m, file=sys.stderr))
        if src.is_dir():
            res = model_flops(src, h, w)
        else:
            r = graph_flops(src, h, w)
            res = {r["graph"]: r}
    Console(width=max(Console().width, 120)).print(flops_table(res, f"MACs / FLOPs at {h}x{w} (padded to multiples of 64)"))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
