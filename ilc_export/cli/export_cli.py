"""ilc-export: turn checkpoints into deployable graphs and check them.

Thin commands over ilc_export.export / ilc_export.verify; the lead may add more commands.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Export ILC checkpoints to ONNX/TensorRT and verify them.")
console = Console(stderr=True)


@app.command("onnx")
def onnx_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="checkpoint (.safetensors) to export"),
    out: Path | None = typer.Option(None, "--out", help="export folder (default: engines/<model-name>/onnx)"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (>= 17)"),
    fp16: bool = typer.Option(False, "--fp16/--no-fp16", help="also write fp16 graphs with fp32 islands"),
):
    """Export the forward, hyper_mean and inverse graphs of a checkpoint."""
    from ..export.onnx_export import ExportError, export_onnx

    try:
        with console.status("exporting") as status:
            folder = export_onnx(ckpt, out, opset=opset, fp16=fp16, progress=lambda m: status.update(m))
    except (ExportError, FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1)
    man = json.loads((folder / "manifest.json").read_text())
    console.print(f"[green]wrote[/green] {folder}  (model {man['model_name']}, id {man['model_id']})")
    for name, f in sorted(man["files"].items()):
        console.print(f"  {name:22s} {f['bytes']:>10,d} bytes")


@app.command("verify")
def verify_cmd(
    folder: Path = typer.Argument(..., help="ONNX export folder"),
    ckpt: Path | None = typer.Option(None, "--ckpt", help="source checkpoint (default: the one in the manifest)"),
    image: list[Path] = typer.Option([], "--image", "-i", help="image(s) to test with (default: a synthetic pattern)"),
    precision: list[str] = typer.Option(["fp32", "fp16"], "--precision", "-p"),
    threads: int = typer.Option(1, "--threads"),
    json_out: Path | None = typer.Option(None, "--json", help="write the full report as JSON"),
):
    """Compare the ONNX Runtime graphs with the PyTorch reference (per graph and end to end)."""
    from ..verify.parity import VerifyError, format_report, verify_export

    try:
        with console.status("verifying") as status:
            report = verify_export(folder, ckpt=ckpt, images=list(image) or None, precisions=tuple(precision),
                                   threads=threads, progress=lambda m: status.update(m))
    except (VerifyError, FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1)
    typer.echo(format_report(report))
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    raise typer.Exit(0 if report["pass"] else 1)


@app.command("tables")
def tables_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="checkpoint (.safetensors) to finalize in place"),
    calib: Path | None = typer.Option(None, "--calib", help="folder of images to calibrate the integer scale network"),
):
    """Derive the codec tables (integer CDFs, integer scale network) once and store them in the checkpoint."""
    from ..codec.tables_build import finalize_checkpoint

    try:
        with console.status("building codec tables"):
            mid = finalize_checkpoint(ckpt, calib)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1)
    console.print(f"[green]wrote tables into[/green] {ckpt}  (model id {mid})")


from .trt_cli import register  # noqa: E402

register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
