"""Build TensorRT engines from the exported ONNX graphs (``ilc-export trt``).

One code path serves TensorRT 10 (JetPack 6, weakly typed), TensorRT 11 (JetPack 7) and
TensorRT for RTX (strongly typed); see :mod:`.trt_flavours` for what differs.

Precision policy (fp16 builds), checked before every build from the parsed network:

* ``hyper_mean`` is built in fp32 (mu moves every dequantised latent);
* in the other graphs the couplings' Sigmoid and Exp run in fp32: TensorRT 10 gets per-layer
  fp32 constraints on them and on the elementwise layers between them; strongly typed
  flavours get them from the fp16 ONNX graph's fp32 islands and only verify.

A layer that must stay fp32 but would not makes the build fail (``check="error"``) with the
layer names. Where an engine can be deserialised (a GPU it was built for), the engine
inspector's view is recorded as well; on a CPU-only machine that part is skipped and says so.

Without a GPU, only ``tensorrt_rtx`` can build ("CPU-only AOT"): it targets the compute
capabilities given (default SM86 and SM89: RTX 30xx/A-series Ampere and RTX 40xx Ada).
Full TensorRT always builds for the GPU it runs on.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from ..backends.tensorrt import cuda_probe
from ..backends.tensorrt.flavour import FlavourError, normalise_cc
from ..contract.files import sha256_file, write_atomic
from ..contract.geometry import PAD_MULTIPLE
from ..contract.graphs import FP32_GRAPHS, GRAPH_NAMES, TENSOR_STRIDE
from ..contract.manifest import ENGINE_FORMAT as FORMAT
from ..contract.manifest import (FORMAT_VERSIONS, ONNX_FORMAT, ManifestError, manifest_format, read_manifest,
                                 write_manifest)
from ..contract.manifest import MANIFEST_NAME as MANIFEST
from ..contract.errors import IlcError
from .trt_flavours import BuildFlavour, detect

FORMAT_VERSION = FORMAT_VERSIONS[FORMAT]

#: image-space (batch, height, width) of the default optimisation profile
DEFAULT_MIN_SHAPE = (1, 64, 64)
DEFAULT_OPT_SHAPE = (1, 1088, 1920)  # 1080p padded to a multiple of 64
DEFAULT_MAX_SHAPE = (1, 2176, 3840)  # 4K UHD padded
#: CPU-only AOT targets of tensorrt_rtx when none are given
DEFAULT_CCS = ("SM86", "SM89")


class BuildError(IlcError, RuntimeError):
    """An engine could not be built (bad input, unsupported option, builder failure)."""


class OnnxParseError(BuildError):
    """The ONNX parser rejected a graph; the message names the file and the nodes."""


class PrecisionCheckError(BuildError):
    """Layers that must stay fp32 would run in lower precision."""


# --------------------------------------------------------------------------- shapes
def parse_shape(shape: str | Iterable[int]) -> tuple[int, int, int]:
    """'1088x1920', '2x1088x1920' or (B, H, W) / (H, W) -> (B, H, W); H, W multiples of 64."""
    if isinstance(shape, str):
        parts = [p for p in re.split(r"[x,\s]+", shape.strip().lower()) if p]
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise BuildError(f"bad shape {shape!r}: write HxW or BxHxW, e.g. 1088x1920 or 1x1088x1920") from None
    else:
        dims = [int(d) for d in shape]
    if len(dims) == 2:
        dims = [1, *dims]
    if len(dims) != 3 or min(dims) < 1:
        raise BuildError(f"bad shape {shape!r}: write HxW or BxHxW with positive sizes")
    b, h, w = dims
    if h % PAD_MULTIPLE or w % PAD_MULTIPLE:
        raise BuildError(
            f"shape {b}x{h}x{w}: height and width must be multiples of {PAD_MULTIPLE} "
            f"(images are padded to that; e.g. 1080 -> 1088)"
        )
    return b, h, w


def format_shape(bhw) -> str:
    return "x".join(str(int(d)) for d in bhw)


def input_shape(name: str, channels: int, bhw: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(B, C, h, w) of graph input `name` for an image batch of shape (B, H, W)."""
    scales = TENSOR_STRIDE
    if name not in scales:
        raise BuildError(f"graph input {name!r} has no known size relation to the image ({', '.join(scales)})")
    b, h, w = bhw
    s = scales[name]
    return (b, channels, h // s, w // s)


# --------------------------------------------------------------------------- files
def load_onnx_manifest(onnx_dir: Path) -> dict:
    """The export's manifest; {} for a folder of .onnx files without one."""
    onnx_dir = Path(onnx_dir)
    if not (onnx_dir / MANIFEST).exists():
        return {}
    if manifest_format(onnx_dir) == FORMAT:
        raise BuildError(f"{onnx_dir} holds TensorRT engines, not ONNX graphs")
    try:
        return read_manifest(onnx_dir, ONNX_FORMAT)
    except ManifestError as e:
        raise BuildError(str(e)) from e


def find_onnx(onnx_dir: Path, graph: str, fp16: bool, manifest: dict | None = None) -> Path:
    """The ONNX file of `graph` (its fp16 variant if `fp16`) in an export folder."""
    onnx_dir = Path(onnx_dir)
    manifest = manifest if manifest is not None else load_onnx_manifest(onnx_dir)
    prec = "fp16" if fp16 else "fp32"
    listed = (manifest.get("precisions") or {}).get(prec) or {}
    if graph in listed:  # the export manifest says (ilc_export.contract.manifest)
        names = [listed[graph]]
    elif manifest.get("precisions"):
        hint = " (export with --fp16)" if fp16 else ""
        raise BuildError(f"the export in {onnx_dir} has no {prec} graph for {graph!r}{hint}")
    elif fp16:  # a folder without a manifest: the exporter's naming
        names = [f"{graph}.fp16.onnx", f"{graph}_fp16.onnx", f"fp16/{graph}.onnx"]
    else:
        names = [f"{graph}.onnx"]
    for n in names:
        if (onnx_dir / n).is_file():
            want = (manifest.get("files") or {}).get(n)
            if want and want.get("sha256") and sha256_file(onnx_dir / n) != want["sha256"]:
                raise BuildError(
                    f"{onnx_dir / n} does not match the export manifest (sha256 differs): the file is corrupted "
                    "or from another export; re-export it"
                )
            return onnx_dir / n
    what = "fp16 ONNX graph" if fp16 else "ONNX graph"
    hint = " (export with --fp16)" if fp16 else ""
    raise BuildError(f"no {what} for {graph!r} in {onnx_dir}{hint}; looked for {', '.join(dict.fromkeys(names))}")


# --------------------------------------------------------------------------- TensorRT plumbing
def _make_logger(trt):
    class _Logger(trt.ILogger):
        """Keeps TensorRT's messages (shown in errors) instead of printing them."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []
            self.verbose = bool(os.environ.get("ILC_TRT_VERBOSE"))

        def log(self, severity, msg):
            sev = str(severity).split(".")[-1]
            self.messages.append((sev, msg))
            if self.verbose:
                print(f"[TRT {sev}] {msg}")

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]

    return _Logger()


def _make_monitor(trt, emit: Callable[[dict], None], graph: str, cancel: threading.Event):
    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            emit({"event": "phase_start", "graph": graph, "phase": phase_name, "parent": parent_phase,
                  "steps": int(num_steps)})

        def phase_finish(self, phase_name):
            emit({"event": "phase_finish", "graph": graph, "phase": phase_name})

        def step_complete(self, phase_name, step):
            emit({"event": "step", "graph": graph, "phase": phase_name, "step": int(step)})
            return not cancel.is_set()

    return _Monitor()


def parse_onnx(flavour: BuildFlavour, builder, logger, path: Path, strongly_typed: bool):
    """Parse an ONNX file into a new network; OnnxParseError names the file and failing nodes."""
    trt = flavour.trt
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"ONNX file not found: {path}")
    network = flavour.create_network(builder, strongly_typed)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    if ok and parser.num_errors == 0:
        return network, parser
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = getattr(e, "node_name", lambda: "")() or ""
        op = getattr(e, "node_operator", lambda: "")() or ""
        idx = e.node()
        where = f"node {node!r}" if node else (f"node #{idx}" if idx >= 0 else "model")
        if op:
            where += f" ({op})"
        lines.append(f"  {where}: {e.code().name}: {e.desc()}")
    if not lines:
        lines = [f"  {m}" for m in logger.errors()[-5:]] or ["  (no details from the parser)"]
    hint = ""
    if any("MODEL_DESERIALIZE" in ln for ln in lines):
        hint = "\n  the file is not a readable ONNX model (truncated or corrupt?): re-export it"
    raise OnnxParseError(f"TensorRT's ONNX parser rejected {path}:\n" + "\n".join(lines) + hint)


def _float_outputs(flavour: BuildFlavour, layer) -> list:
    trt = flavour.trt
    floats = {trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float32)}
    return [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]


def _graph_maps(network):
    producer, consumers = {}, {}
    for i in range(network.num_layers):
        L = network.get_layer(i)
        for j in range(L.num_outputs):
            producer[L.get_output(j).name] = i
        for j in range(L.num_inputs):
            t = L.get_input(j)
            if t is not None:
                consumers.setdefault(t.name, []).append(i)
    return producer, consumers


def declared_fp32(onnx_manifest: dict, graph: str) -> list[str]:
    """Node names the exporter kept in fp32 (``manifest["fp16"]["fp32_islands"][graph]``; '*' = all)."""
    fp16 = onnx_manifest.get("fp16") or {}
    return list((fp16.get("fp32_islands") or {}).get(graph, []))


def sensitive_layers(flavour: BuildFlavour, network, graph: str, declared: Iterable[str] = ()) -> tuple[set[int], set[int]]:
    """(must_fp32, island): layer indices that must run fp32, and the wider set TensorRT 10 pins.

    must_fp32: every float layer of the FP32_GRAPHS (or of a graph declared '*'); elsewhere each
    Sigmoid and Exp, and every float layer named like a node of the exporter's fp32 islands
    (`declared`: TensorRT names a layer after its ONNX node).
    island: must_fp32 plus the elementwise/unary layers on a path from a Sigmoid to an Exp
    (s = c * (2 * sigmoid(h) - 1); exp(s) or exp(-s)).
    """
    trt = flavour.trt
    n = network.num_layers
    declared = set(declared)
    if graph in FP32_GRAPHS or "*" in declared:
        every = {i for i in range(n) if _float_outputs(flavour, network.get_layer(i))}
        return every, every
    ops = {i: flavour.layer_op(network.get_layer(i)) for i in range(n)}
    sig = {i for i, o in ops.items() if o == "Sigmoid"}
    exp = {i for i, o in ops.items() if o == "Exp"}
    named = {i for i in range(n) if network.get_layer(i).name in declared
             and _float_outputs(flavour, network.get_layer(i))}
    must = sig | exp | named
    _, consumers = _graph_maps(network)
    passable = (trt.LayerType.ELEMENTWISE, trt.LayerType.UNARY, trt.LayerType.SHUFFLE, trt.LayerType.CAST)
    island = set(must)

    def walk(i, path):
        L = network.get_layer(i)
        for j in range(L.num_outputs):
            for c in consumers.get(L.get_output(j).name, []):
                if c in exp:
                    island.update(path)
                elif c not in path and network.get_layer(c).type in passable and len(path) < 12:
                    walk(c, path | {c})

    for s in sig:
        walk(s, set())
    return must, island


def apply_fp32_constraints(flavour: BuildFlavour, network, layers: set[int]) -> int:
    """TensorRT 10: pin these layers (and their float outputs) to fp32. Returns how many."""
    trt = flavour.trt
    for i in layers:
        L = network.get_layer(i)
        if L.type in (trt.LayerType.SHAPE, trt.LayerType.CONSTANT):
            continue
        L.precision = trt.float32
        for j in _float_outputs(flavour, L):
            L.set_output_type(j, trt.float32)
    return len(layers)


def layer_precision_report(flavour: BuildFlavour, network, graph: str, fp16: bool, typing: str,
                           declared: Iterable[str] = ()) -> dict:
    """Each layer's (planned) precision from the parsed network, and the fp32 check.

    strong typing: the precision is the network's own tensor types (what the engine runs);
    weak typing: 'fp32' where constrained, 'fp16|fp32' where the builder may choose (FP16 flag).
    """
    trt = flavour.trt
    declared = list(declared)
    must, _ = sensitive_layers(flavour, network, graph, declared)
    names = {network.get_layer(i).name for i in range(network.num_layers)}
    unmatched = [d for d in declared if d != "*" and d not in names]
    rows, violations, counts = [], [], {}
    for i in range(network.num_layers):
        L = network.get_layer(i)
        fo = _float_outputs(flavour, L)
        out_types = [flavour.dtype_name(L.get_output(j).dtype) for j in range(L.num_outputs)]
        if typing == "strong" or not fp16:
            prec = flavour.dtype_name(L.get_output(fo[0]).dtype) if fo else (out_types[0] if out_types else "-")
            ok = not fo or all(L.get_output(j).dtype == trt.float32 for j in fo)
        else:
            pinned = bool(getattr(L, "precision_is_set", False)) and L.precision == trt.float32 and all(
                L.output_type_is_set(j) and L.get_output_type(j) == trt.float32 for j in fo
            )
            prec = "fp32" if (pinned or not fo) else "fp16|fp32"
            if not fo:
                prec = out_types[0] if out_types else "-"
            ok = pinned or not fo
        row = {"index": i, "name": L.name, "op": flavour.layer_op(L), "precision": prec, "outputs": out_types}
        if i in must:
            row["must_fp32"] = True
            if not ok:
                violations.append(L.name)
        counts[prec] = counts.get(prec, 0) + 1
        rows.append(row)
    return {
        "graph": graph,
        "source": "parsed network (before build)",
        "typing": typing,
        "counts": counts,
        "must_fp32": len(must),
        "declared_fp32_unmatched": unmatched,  # island node names with no layer of that name
        "violations": violations,
        "ok": not violations,
        "layers": rows,
    }


def inspect_engine(flavour: BuildFlavour, engine_bytes, targets: list[str], graph: str, device: int = 0) -> dict:
    """The engine inspector's view of layer precisions, where this machine can deserialise it."""
    cc = cuda_probe.compute_capability(device)
    if cc is None:
        return {"available": False, "reason": "no CUDA GPU on the build machine: engine not deserialised"}
    if targets and cc not in targets:
        return {"available": False, "reason": f"this GPU is {cc}; the engine targets {', '.join(targets)}"}
    trt = flavour.trt
    logger = _make_logger(trt)
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            return {"available": False, "reason": "deserialisation failed: " + "; ".join(logger.errors()[-3:])}
        insp = engine.create_engine_inspector()
        info = json.loads(insp.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception as e:  # noqa: BLE001 -- never let the inspector break a good build
        return {"available": False, "reason": f"inspector failed: {e}"}
    layers = info.get("Layers", [])
    out, bad = [], []
    for L in layers:
        if not isinstance(L, dict):
            out.append({"name": str(L)})
            continue
        name = L.get("Name", "")
        fmts = [o.get("Format/Datatype", "") for o in L.get("Outputs", [])]
        half = any(("Half" in f or "FP16" in f.upper()) for f in fmts)
        out.append({"name": name, "outputs": fmts})
        if (graph in FP32_GRAPHS or re.search(r"(Sigmoid|/Exp)\b", name)) and half:
            bad.append(name)
    return {"available": True, "device_cc": cc, "layers": out, "violations": bad, "ok": not bad}


# --------------------------------------------------------------------------- the build
def build_engines(onnx_dir: str | Path, out_dir: str | Path, fp16: bool = False, *args, **kw) -> Path:
    """Build one engine per graph of an ONNX export folder into `out_dir`; returns the manifest path.

    An fp16 build from an export without fp16 graphs (``ilc-export onnx`` without --fp16)
    converts them first, with the exporter's fp32-island policy (``fp16.to_fp16``), into a
    temporary copy of the export; the engine manifest records that. See ``_build_engines``
    for the other arguments."""
    onnx_dir = Path(onnx_dir)
    man = load_onnx_manifest(onnx_dir)
    if fp16 and kw.get("keep_fp32", True) and man.get("precisions") and "fp16" not in man["precisions"]:
        with tempfile.TemporaryDirectory(prefix="ilc-fp16-export-") as tmp:
            view = with_fp16_graphs(onnx_dir, man, Path(tmp))
            return _build_engines(view, out_dir, fp16, *args, record_dir=onnx_dir,
                                  fp16_source="converted from the fp32 export by ilc-export trt", **kw)
    return _build_engines(onnx_dir, out_dir, fp16, *args, **kw)


def with_fp16_graphs(onnx_dir: Path, manifest: dict, tmp: Path) -> Path:
    """A copy of an fp32-only export folder in `tmp`, with fp16 graphs (fp32 islands) added the
    way ``ilc-export onnx --fp16`` writes them; returns `tmp`."""
    try:
        import onnx

        from . import fp16 as fp16_mod
    except ImportError as e:
        raise BuildError(f"converting the fp32 graphs to fp16 needs the onnx package ({e}): pip install onnx, "
                         "or export with `ilc-export onnx --fp16`") from e
    files = dict(manifest.get("files") or {})
    for name in files:
        shutil.copyfile(onnx_dir / name, tmp / name)
    fp16_files, islands = {}, {}
    for g, fname in (manifest["precisions"].get("fp32") or {}).items():
        if g in FP32_GRAPHS:
            fp16_files[g], islands[g] = fname, ["*"]
            continue
        model = onnx.load(str(onnx_dir / fname))
        m16, keep = fp16_mod.to_fp16(model, g)
        for p in m16.metadata_props:
            if p.key == "ilc.precision":
                p.value = "fp16"
        try:
            onnx.checker.check_model(m16, full_check=True)
        except Exception as e:  # noqa: BLE001 - onnx raises several unrelated types
            raise BuildError(f"{g}: the fp16 conversion of {fname} fails onnx.checker: {e}") from e
        name = f"{g}.fp16.onnx"
        (tmp / name).write_bytes(m16.SerializeToString(deterministic=True))
        fp16_files[g], islands[g] = name, keep
        files[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
    m = {**manifest, "precisions": {**manifest["precisions"], "fp16": fp16_files}, "files": files,
         "fp16": {"fp32_islands": islands, "policy": "converted from the fp32 export by ilc-export trt "
                  "(the exporter's fp32-island policy)"}}
    write_manifest(tmp, m)
    return tmp


def _check_profile(min_shape, opt_shape, max_shape) -> dict[str, tuple[int, int, int]]:
    """The optimisation profile's image-space shapes; BuildError unless min <= opt <= max."""
    shapes = {"min": parse_shape(min_shape), "opt": parse_shape(opt_shape), "max": parse_shape(max_shape)}
    for k in range(3):
        if not shapes["min"][k] <= shapes["opt"][k] <= shapes["max"][k]:
            raise BuildError(
                "profile must satisfy min <= opt <= max in every dimension; got "
                + ", ".join(f"{n} {format_shape(s)}" for n, s in shapes.items())
            )
    return shapes


def _targets(fl: BuildFlavour, compute_capabilities: Iterable[str] | None) -> tuple[list[str], str | None]:
    """(compute capabilities to build for, the local GPU's or None): tensorrt_rtx builds for the
    ones asked (default DEFAULT_CCS) without a GPU; full TensorRT for the local GPU only."""
    try:
        if fl.supports_target_cc:
            targets = [normalise_cc(c) for c in (compute_capabilities or DEFAULT_CCS)]
            for c in targets:
                fl.cc_enum(c)
            return targets, None
        asked = [normalise_cc(c) for c in (compute_capabilities or [])]
    except FlavourError as e:
        raise BuildError(str(e)) from e
    local_cc = cuda_probe.compute_capability(0)
    if local_cc is None:
        raise BuildError(
            f"{fl.describe()} needs a CUDA GPU to build (it builds for the GPU it runs on); "
            "on a machine without one install tensorrt-rtx-cu12 for CPU-only AOT builds"
        )
    if asked and asked != [local_cc]:
        raise BuildError(
            f"{fl.describe()} builds for the local GPU ({local_cc}) only; asked for {', '.join(asked)}. "
            "Build on the target device instead"
        )
    return [local_cc], local_cc


def _precision_checked(report: dict, g: str, path: Path, typing: str, keep_fp32: bool, check: str,
                       emit: Callable[[dict], None]) -> None:
    """Act on a failed fp32-layer check of the parsed network: raise ('error') or report ('warn')."""
    if report["ok"] or check == "off":
        return
    msg = (f"{g}: {len(report['violations'])} layer(s) that must stay fp32 would not: "
           + ", ".join(report["violations"][:8]) + (" ..." if len(report["violations"]) > 8 else "")
           + (f"\n  the fp16 ONNX graph {path.name} lacks fp32 islands there (re-export it)"
              if typing == "strong" and keep_fp32 else ""))
    if check == "error":
        raise PrecisionCheckError(msg)
    emit({"event": "message", "level": "error", "text": f"precision check failed: {msg}"})


def _set_profile(builder, config, network, path: Path, shapes: dict) -> dict:
    """Give every graph input its profile (latents at /16, hyper-latents at /64); returns the record."""
    profile = builder.create_optimization_profile()
    record = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = tuple(t.shape)
        if len(dims) != 4 or dims[1] < 0:
            raise BuildError(f"{path.name}: input {t.name!r} has shape {dims}; expected (B, C, H, W), C fixed")
        mm = {k: input_shape(t.name, dims[1], s) for k, s in shapes.items()}
        for k, s in mm.items():
            for d, (want, have) in enumerate(zip(s, dims)):
                if have >= 0 and have != want:
                    raise BuildError(
                        f"{path.name}: input {t.name!r} has a fixed dimension {d} = {have}, but the "
                        f"{k} profile needs {want}; export the graph with dynamic batch/height/width"
                    )
        profile.set_shape(t.name, mm["min"], mm["opt"], mm["max"])
        record[t.name] = {k: list(v) for k, v in mm.items()}
    config.add_optimization_profile(profile)
    return record


def _tensors(fl: BuildFlavour, network) -> dict:
    """Name -> mode, dtype and (symbolic) shape of the network's inputs and outputs."""
    io = {}
    for mode, n, get in (("input", network.num_inputs, network.get_input),
                         ("output", network.num_outputs, network.get_output)):
        for i in range(n):
            t = get(i)
            io[t.name] = {"mode": mode, "dtype": fl.dtype_name(t.dtype), "shape": list(t.shape)}
    return io


class _Build:
    """One engine folder's build: the builder, logger and timing cache its graphs share."""

    def __init__(self, fl: BuildFlavour, out_dir: Path, onnx_manifest: dict, shapes: dict, targets: list[str],
                 fp16: bool, keep_fp32: bool, check: str, workspace: int | None, timing_cache,
                 emit: Callable[[dict], None]):
        self.fl, self.out_dir, self.onnx_manifest, self.shapes, self.targets = fl, out_dir, onnx_manifest, shapes, targets
        self.fp16, self.keep_fp32, self.check, self.workspace, self.emit = fp16, keep_fp32, check, workspace, emit
        self.timing_cache = timing_cache if timing_cache is not None and fl.supports_timing_cache else None
        self.cache = None
        self.logger = _make_logger(fl.trt)
        self.builder = fl.trt.Builder(self.logger)
        self.cancel = threading.Event()

    def _config(self, network, g: str, path: Path, g_fp16: bool) -> tuple[object, dict, dict]:
        """(builder config, layer precision report, profile record) for one parsed graph."""
        fl, trt = self.fl, self.fl.trt
        config = self.builder.create_builder_config()
        declared = declared_fp32(self.onnx_manifest, g) if self.fp16 else []
        if fl.typing == "weak" and g_fp16:
            fl.enable_weak_fp16(config)
            if self.keep_fp32:
                _, island = sensitive_layers(fl, network, g, declared)
                apply_fp32_constraints(fl, network, island)
        report = layer_precision_report(fl, network, g, g_fp16, fl.typing, declared)
        if self.fp16:
            _precision_checked(report, g, path, fl.typing, self.keep_fp32, self.check, self.emit)
        if fl.supports_target_cc:
            fl.set_target_ccs(config, self.targets)
        prof = _set_profile(self.builder, config, network, path, self.shapes)
        if self.workspace:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.workspace))
        with contextlib.suppress(AttributeError, TypeError):
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info for the inspector
        if self.timing_cache is not None:
            if self.cache is None:
                tc = Path(self.timing_cache)
                self.cache = config.create_timing_cache(tc.read_bytes() if tc.exists() else b"")
            config.set_timing_cache(self.cache, ignore_mismatch=False)
        return config, report, prof

    def graph(self, g: str, g_fp16: bool, path: Path) -> dict:
        """Build one graph's engine, write it and its layer report; returns its manifest entry."""
        fl = self.fl
        self.emit({"event": "graph_start", "graph": g, "onnx": str(path)})
        self.logger.messages.clear()
        network, _parser = parse_onnx(fl, self.builder, self.logger, path, strongly_typed=(fl.typing == "strong"))
        config, report, prof = self._config(network, g, path, g_fp16)
        monitor = None
        if hasattr(config, "progress_monitor"):
            monitor = _make_monitor(fl.trt, self.emit, g, self.cancel)
            config.progress_monitor = monitor
        t0 = time.perf_counter()
        blob = self.builder.build_serialized_network(network, config)
        build_s = time.perf_counter() - t0
        if blob is None:
            errs = "\n  ".join(self.logger.errors()[-10:]) or "(no message)"
            raise BuildError(f"TensorRT could not build {g} from {path.name}:\n  {errs}")
        engine_file = self.out_dir / f"{g}.engine"
        write_atomic(engine_file, memoryview(blob))
        size = engine_file.stat().st_size
        inspection = inspect_engine(fl, blob, self.targets, g)
        if inspection.get("available") and not inspection["ok"] and self.fp16 and self.check != "off":
            msg = f"{g}: the engine runs these fp32-required layers in fp16: {', '.join(inspection['violations'][:8])}"
            if self.check == "error":
                engine_file.unlink()
                raise PrecisionCheckError(msg)
            self.emit({"event": "message", "level": "error", "text": f"precision check failed: {msg}"})
        write_atomic(self.out_dir / f"{g}.layers.json",
                     (json.dumps({"parsed": report, "engine": inspection}, indent=1) + "\n").encode())
        del blob
        entry = {
            "file": engine_file.name,
            "bytes": size,
            "sha256": sha256_file(engine_file),
            "build_s": round(build_s, 3),
            "precision": "fp16" if g_fp16 else "fp32",
            "onnx": {"file": path.name, "sha256": sha256_file(path)},
            "profile": prof,
            "tensors": _tensors(fl, network),
            "layers": {
                "file": f"{g}.layers.json",
                "counts": report["counts"],
                "must_fp32": report["must_fp32"],
                "fp32_check": "passed" if report["ok"] else "FAILED: " + ", ".join(report["violations"][:20]),
                "engine_inspector": "checked" if inspection.get("available") else inspection["reason"],
            },
        }
        self.emit({"event": "graph_done", "graph": g, "build_s": build_s, "bytes": size,
                   "precision": entry["precision"], "fp32_check": report["ok"]})
        del network, _parser, config, monitor
        return entry

    def save_cache(self) -> bool:
        """Write the timing cache back (True when there was one)."""
        if self.cache is None:
            return False
        Path(self.timing_cache).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(self.timing_cache), memoryview(self.cache.serialize()))
        return True


def _build_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    fp16: bool = False,
    min_shape=DEFAULT_MIN_SHAPE,
    opt_shape=DEFAULT_OPT_SHAPE,
    max_shape=DEFAULT_MAX_SHAPE,
    timing_cache: str | Path | None = None,
    compute_capabilities: Iterable[str] | None = None,
    workspace: int | None = None,
    progress: Callable[[dict], None] | bool | None = None,
    *,
    graphs: Iterable[str] = GRAPH_NAMES,
    flavour: BuildFlavour | str | None = None,
    keep_fp32: bool = True,
    check: str = "error",
    record_dir: Path | None = None,
    fp16_source: str = "export",
) -> Path:
    """Build one engine per graph of an ONNX export folder into `out_dir`; returns the manifest path.

    Shapes are image-space (B, H, W) or 'BxHxW'/'HxW' strings; each graph input gets the matching
    profile (latents at /16, hyper-latents at /64). `compute_capabilities`: targets for
    tensorrt_rtx (default SM86, SM89); with full TensorRT, None (= the local GPU) or exactly
    the local GPU's. `workspace`: builder workspace limit in bytes. `progress`: a callable that
    gets event dicts (graph_start, phase_start, step, phase_finish, graph_done, and message with
    a level and a plain text); None or False: no events (the CLI draws them). `keep_fp32=False`
    drops the fp32 policy (hyper_mean fp32, TensorRT 10 constraints) and exists to show that the
    precision check catches it. `check`: 'error' (raise PrecisionCheckError), 'warn' or 'off'.
    """
    t_all = time.perf_counter()
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    if check not in ("error", "warn", "off"):
        raise BuildError(f"check must be 'error', 'warn' or 'off', not {check!r}")
    try:
        fl = flavour if isinstance(flavour, BuildFlavour) else detect(flavour)
    except FlavourError as e:
        raise BuildError(str(e)) from e
    shapes = _check_profile(min_shape, opt_shape, max_shape)
    graphs = tuple(graphs)
    unknown = set(graphs) - set(GRAPH_NAMES)
    if unknown:
        raise BuildError(f"unknown graphs {sorted(unknown)}; the export has {', '.join(GRAPH_NAMES)}")
    onnx_manifest = load_onnx_manifest(onnx_dir)
    targets, local_cc = _targets(fl, compute_capabilities)
    plan = []  # (graph, fp16 engine?, ONNX file)
    for g in graphs:
        g_fp16 = fp16 and (g not in FP32_GRAPHS or not keep_fp32)
        plan.append((g, g_fp16, find_onnx(onnx_dir, g, g_fp16 and fl.typing == "strong", onnx_manifest)))
    emit: Callable[[dict], None] = progress if callable(progress) else (lambda ev: None)

    out_dir.mkdir(parents=True, exist_ok=True)
    # a half-rebuilt folder must not look complete: the manifest goes first and comes back last
    with contextlib.suppress(FileNotFoundError):
        (out_dir / MANIFEST).unlink()
    build = _Build(fl, out_dir, onnx_manifest, shapes, targets, fp16, keep_fp32, check, workspace, timing_cache, emit)
    cache_note = None
    if timing_cache is not None and not fl.supports_timing_cache:
        cache_note = f"{fl.name} {fl.version} has no timing cache (its calls are no-ops); ignored"
        emit({"event": "message", "level": "note", "text": cache_note})
    engines = {g: build.graph(g, g_fp16, path) for g, g_fp16, path in plan}
    cached = build.save_cache()

    copied = _copy_model_files(onnx_dir, out_dir, onnx_manifest)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": onnx_manifest.get("model_id"),
        "config": onnx_manifest.get("config"),
        "encoder_addon": onnx_manifest.get("encoder_addon"),  # baked into the forward engine with its graph
        "flavour": fl.name,
        "trt_version": fl.version,
        "typing": fl.typing,
        "compute_capabilities": targets,
        "precision": "fp16" if fp16 else "fp32",
        "fp32_policy": {"graphs": list(FP32_GRAPHS), "ops": ["Sigmoid", "Exp"], "applied": keep_fp32},
        "profile": {k: list(v) for k, v in shapes.items()},  # image-space (B, H, W)
        "workspace_bytes": workspace,
        "timing_cache": (str(timing_cache) if cached else cache_note),
        "engines": engines,
        "onnx_dir": str(record_dir or onnx_dir),
        "fp16_graphs": fp16_source if fp16 else None,
        "onnx_manifest": "onnx_manifest.json" if (onnx_dir / MANIFEST).exists() else None,
        "tables": copied.get("tables"),
        "build": {
            "host": platform.node(),
            "platform": platform.platform(),
            "gpu": cuda_probe.device_name(0) if local_cc or cuda_probe.device_count() else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "total_s": round(time.perf_counter() - t_all, 3),
        },
    }
    write_manifest(out_dir, manifest, sort_keys=False)
    return out_dir / MANIFEST


def _copy_model_files(onnx_dir: Path, out_dir: Path, onnx_manifest: dict) -> dict:
    """Carry the ONNX manifest and the codec tables next to the engines (ilc-run needs both)."""
    out = {}
    if (onnx_dir / MANIFEST).exists():
        shutil.copyfile(onnx_dir / MANIFEST, out_dir / "onnx_manifest.json")
    tables = onnx_manifest.get("tables")
    if isinstance(tables, dict):
        tables = tables.get("file") or tables.get("path")
    cands = [onnx_dir / tables] if isinstance(tables, str) else sorted(onnx_dir.glob("*.safetensors"))
    for c in cands:
        if c.is_file():
            shutil.copyfile(c, out_dir / c.name)
            out["tables"] = c.name
            break
    return out


def default_out_dir(onnx_dir: str | Path, fp16: bool = False) -> Path:
    """The engine folder beside an ONNX folder: trt/ (fp32) or trt-fp16/ (engines/<model>/onnx ->
    engines/<model>/trt)."""
    onnx_dir = Path(onnx_dir)
    return onnx_dir.parent / ("trt-fp16" if fp16 else "trt")


def build_from_checkpoint(ckpt: str | Path, out_dir: str | Path, fp16: bool = False, onnx_dir: str | Path | None = None,
                          force: bool = False, **kw) -> Path:
    """Export `ckpt` to ONNX (into onnx_dir or out_dir/onnx), then build its engines. An
    existing export of the same model (same model id) in onnx_dir is reused; one of another
    model is replaced only with `force`."""
    from ..contract.model_id import model_id_of_file

    out_dir = Path(out_dir)
    onnx_dir = Path(onnx_dir) if onnx_dir else out_dir / "onnx"
    mid = model_id_of_file(Path(ckpt))
    have = load_onnx_manifest(onnx_dir) if onnx_dir.is_dir() else {}
    if have.get("model_id") != mid:
        if onnx_dir.exists() and not force:
            raise BuildError(f"{onnx_dir} exists and holds {'another model' if have else 'no ONNX export'}; "
                             "pass --force to replace it")
        from .onnx_export import export_onnx  # needs torch

        export_onnx(Path(ckpt), onnx_dir, fp16=fp16)
    return build_engines(onnx_dir, out_dir, fp16=fp16, **kw)


# --------------------------------------------------------------------------- CLI helpers
def parse_size(s: str | int | None) -> int | None:
    """'2G', '512MiB', '1073741824' -> bytes."""
    if s is None or isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", str(s).lower())
    if not m:
        raise BuildError(f"bad size {s!r}: write e.g. 2G, 512M or a byte count")
    mult = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)]
    return int(float(m.group(1)) * mult)
