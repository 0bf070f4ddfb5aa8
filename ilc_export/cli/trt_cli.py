"""`ilc-export trt`: build TensorRT engines from an ONNX export (or straight from a checkpoint).

Registered on the ilc-export app by ``register(app)`` (export_cli calls it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import console, need_torch, out, user_errors


def trt_cmd(
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="ONNX export folder (from `ilc-export onnx`)"),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="or a checkpoint: exported first into "
                                        "engines/<model>/onnx (an export of the same model there is reused)"),
    fp16: bool = typer.Option(False, "--fp16/--fp32", help="fp16 engines (hyper_mean and the fp32 islands stay "
                              "fp32); an fp32-only export is converted to fp16 first"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="engine folder (default: trt/, or trt-fp16/ with "
                                           "--fp16, beside the ONNX folder)"),
    min_shape: str = typer.Option("1x64x64", "--min-shape", help="smallest image batch, BxHxW or HxW (padded)"),
    opt_shape: str = typer.Option("1x1088x1920", "--opt-shape", help="the shape TensorRT tunes for"),
    max_shape: str = typer.Option("1x2176x3840", "--max-shape", help="largest image batch the engines accept"),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="reuse/update this timing cache file"),
    compute_capability: list[str] = typer.Option(
        [], "--compute-capability", "-c",
        help="target GPU(s) for tensorrt-rtx CPU-only builds, e.g. SM86 SM89 SM120 (default SM86+SM89); "
             "full TensorRT builds for the local GPU"),
    workspace: Optional[str] = typer.Option(None, "--workspace", help="builder workspace limit, e.g. 2G"),
    flavour: Optional[str] = typer.Option(None, "--flavour", help="tensorrt or tensorrt_rtx (default: what is installed)"),
    check: str = typer.Option("error", "--check", help="fp32-layer check: error | warn | off"),
    force: bool = typer.Option(False, "--force", "-f", help="replace an existing engine folder (and, with --ckpt, "
                               "an ONNX export of another model)"),
):
    """Build one TensorRT engine per graph, with an engine manifest and a layer precision report."""
    from ..export import trt_build as tb

    from ..pipeline.models import UsageError, check_checkpoint, checkpoint_name, source_kind

    if (onnx is None) == (ckpt is None):
        raise UsageError("give exactly one of --onnx and --ckpt")
    if onnx is not None and source_kind(onnx) != "onnx":
        raise UsageError(f"{onnx}: not an ONNX export folder (it holds TensorRT engines)")
    if ckpt is not None:
        check_checkpoint(ckpt)
        need_torch("ilc-export trt --ckpt (it exports the checkpoint first)")
    kw = dict(fp16=fp16, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape, timing_cache=timing_cache,
              compute_capabilities=tuple(compute_capability) or None, workspace=tb.parse_size(workspace),
              flavour=flavour, check=check)
    onnx_dir = onnx if onnx is not None else Path("engines") / checkpoint_name(ckpt) / "onnx"
    target = out_dir or tb.default_out_dir(onnx_dir, fp16)
    if target.exists() and any(target.iterdir()) and not force:
        raise UsageError(f"{target} exists and is not empty; pass --force to rebuild the engines there, or --out")
    with BuildProgress() as display:
        if ckpt is not None:
            manifest = tb.build_from_checkpoint(ckpt, target, onnx_dir=onnx_dir, force=force, progress=display, **kw)
        else:
            manifest = tb.build_engines(onnx, target, progress=display, **kw)
    out.print(summary_table(manifest))
    console.print(f"[green]wrote[/green] {manifest.parent}")


class BuildProgress:
    """The build's events drawn on stderr: one bar per graph, the builder's current phase beside
    it; messages as notes / errors."""

    STYLE = {"note": "[yellow]note:[/]", "error": "[red]error:[/]"}

    def __init__(self):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.p = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[graph]:<11}"), BarColumn(),
                          TextColumn("{task.fields[phase]}"), TimeElapsedColumn(), console=console,
                          transient=False)
        self.tasks: dict[str, int] = {}
        self.depth: dict[str, list[str]] = {}
        self.top_steps = 1

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *exc):
        self.p.__exit__(*exc)

    def _phase(self, g: str, **fields) -> None:
        self.p.update(self.tasks[g], phase=" > ".join(self.depth[g][-2:]), **fields)

    def __call__(self, ev: dict) -> None:
        g, kind = ev.get("graph", ""), ev["event"]
        if kind == "message":
            console.print(f"{self.STYLE.get(ev.get('level'), '')} {escape(ev['text'])}".strip(), highlight=False)
        elif kind == "graph_start":
            self.tasks[g] = self.p.add_task("", total=1.0, graph=g, phase="parsing")
            self.depth[g] = []
        elif g not in self.tasks:
            return
        elif kind == "phase_start":
            self.depth[g].append(ev["phase"])
            self._phase(g)
            if ev.get("parent") is None:
                self.top_steps = max(1, ev.get("steps", 1))
        elif kind == "step" and self.depth[g] and ev["phase"] == self.depth[g][0]:
            self.p.update(self.tasks[g], completed=min(1.0, (ev["step"] + 1) / self.top_steps))
        elif kind == "phase_finish":
            if self.depth[g] and self.depth[g][-1] == ev["phase"]:
                self.depth[g].pop()
            self._phase(g)
        elif kind == "graph_done":
            self.p.update(self.tasks[g], completed=1.0,
                          phase=f"{ev['build_s']:.1f} s, {ev['bytes'] / 2**20:.1f} MiB, {ev['precision']}")


def summary_table(manifest_path: Path):
    """A rich Table of a finished build: graph, precision, build time, size, fp32 check."""
    import json

    from rich.table import Table

    from ..export.trt_build import format_shape

    m = json.loads(Path(manifest_path).read_text())
    t = Table(title=f"{m['flavour']} {m['trt_version']}  targets {', '.join(m['compute_capabilities'])}  "
                    f"profile {format_shape(m['profile']['min'])} .. {format_shape(m['profile']['opt'])} .. "
                    f"{format_shape(m['profile']['max'])} (BxHxW)")
    for c in ("graph", "precision", "build s", "engine MiB", "layers", "fp32 check"):
        t.add_column(c)
    for g, e in m["engines"].items():
        t.add_row(g, e["precision"], f"{e['build_s']:.2f}", f"{e['bytes'] / 2**20:.2f}",
                  " ".join(f"{k}:{v}" for k, v in sorted(e["layers"]["counts"].items())),
                  e["layers"]["fp32_check"])
    return t


def register(app: typer.Typer) -> None:
    app.command("trt")(user_errors(trt_cmd))
