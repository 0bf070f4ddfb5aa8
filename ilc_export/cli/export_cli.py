"""ilc-export: turn checkpoints into deployable graphs and check them.

Thin commands over ilc_export.export / ilc_export.verify.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import ProviderOpt, console, need_torch, note, user_errors, version_option

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Export ILC checkpoints to ONNX/TensorRT and verify them.")


@app.callback()
def _main(version: bool = version_option("ilc-export")):
    """Export ILC checkpoints to ONNX/TensorRT and verify them."""


@app.command("onnx")
@user_errors
def onnx_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="checkpoint (.safetensors) to export"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="export folder (default: engines/<model-name>/onnx "
                                           "in the current folder, where ilc-run looks for it)"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (>= 17)"),
    fp16: bool = typer.Option(False, "--fp16/--no-fp16", help="also write fp16 graphs with fp32 islands"),
    force: bool = typer.Option(False, "--force", "-f", help="replace an existing export folder"),
    encoder_addon: bool = typer.Option(True, "--encoder-addon/--no-encoder-addon",
                                       help="put the checkpoint's encoder add-on (<name>.encoder.safetensors next to "
                                            "it, if any) into the forward graph"),
):
    """Export the forward, hyper_mean and inverse graphs of a checkpoint."""
    from ..pipeline.models import UsageError, check_checkpoint, checkpoint_name

    check_checkpoint(ckpt)
    need_torch("ilc-export onnx")
    folder = out_dir or Path("engines") / checkpoint_name(ckpt) / "onnx"
    if folder.exists() and not force:
        raise UsageError(f"{folder} already exists; pass --force to replace it, or choose another --out")
    from ..export.onnx_export import export_onnx

    with console.status("exporting") as status:
        folder = export_onnx(ckpt, folder, opset=opset, fp16=fp16, progress=lambda m: status.update(m),
                             encoder_addon=encoder_addon)
    from ..contract.manifest import read_manifest

    man = read_manifest(folder)
    console.print(f"[green]wrote[/green] {folder}  (model {man['model_name']}, id {man['model_id']})", highlight=False)
    if man.get("encoder_addon"):
        console.print(f"  forward graph with encoder add-on {man['encoder_addon']['file']}", highlight=False)
    for name, f in sorted(man["files"].items()):
        console.print(f"  {name:22s} {f['bytes']:>10,d} bytes", highlight=False)


@app.command("verify")
@user_errors
def verify_cmd(
    folder: Path = typer.Argument(..., help="ONNX export folder"),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="source checkpoint (default: the one in the manifest)"),
    image: list[Path] = typer.Option([], "--image", "-i", help="image(s) to test with (default: a synthetic pattern)"),
    precision: list[str] = typer.Option(["fp32", "fp16"], "--precision", "-p"),
    threads: int = typer.Option(1, "--threads"),
    device: Optional[str] = typer.Option(None, "--device", help="where the torch reference runs: cpu | cuda | "
                                         "cuda:N (default cpu)"),
    provider: Optional[str] = ProviderOpt,
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full report as JSON"),
    force: bool = typer.Option(False, "--force", "-f", help="overwrite an existing --json file"),
):
    """Compare the ONNX Runtime graphs with the PyTorch reference (per graph and end to end)."""
    need_torch("ilc-export verify")
    from ..pipeline.models import UsageError

    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if json_out is not None and json_out.exists() and not force:
        raise UsageError(f"{json_out} already exists; pass --force to overwrite it")
    from ..verify.parity import format_report, verify_export

    with console.status("verifying") as status:
        report = verify_export(folder, ckpt=ckpt, images=list(image) or None, precisions=tuple(precision),
                               threads=threads, progress=lambda m: status.update(m),
                               providers=provider, device=device)
    typer.echo(format_report(report))
    if json_out:
        from ..pipeline.api import write_output

        write_output(json_out, (json.dumps(report, indent=2) + "\n").encode())
    raise typer.Exit(0 if report["pass"] else 1)


@app.command("tables")
@user_errors
def tables_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="checkpoint (.safetensors) to finalize in place"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="folder of images to calibrate the integer scale network"),
    force: bool = typer.Option(False, "--force", "-f", help="replace existing tables with different ones (the "
                               "model id changes: files written before no longer decode), or write a shipped checkpoint"),
):
    """Derive the codec tables (integer CDFs, integer scale network) once and store them in the checkpoint.

    A checkpoint that has tables keeps them unless --calib is given; rebuilt tables equal to the
    stored ones leave the file untouched (same model id)."""
    from ..contract.model_id import model_id_of_file
    from ..pipeline.models import ModelError, UsageError, is_shipped

    if not ckpt.is_file():
        raise ModelError(f"{ckpt}: no such checkpoint file")
    if is_shipped(ckpt) and not force:
        raise UsageError(f"{ckpt} is a shipped checkpoint; its tables define the model id that existing files "
                         "carry. Copy it elsewhere first, or pass --force")
    need_torch("ilc-export tables")
    from ..export.tables_build import CALIBRATION_KEY, finalize_checkpoint, stored_tables

    try:
        had = bool(stored_tables(ckpt))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for non-checkpoints
        raise ModelError(f"{ckpt}: not a safetensors checkpoint ({' '.join(str(e).split())})") from None
    if had and calib is None and not force:
        from safetensors import safe_open

        with safe_open(str(ckpt), framework="numpy") as f:
            how = (f.metadata() or {}).get(CALIBRATION_KEY, "unrecorded calibration")
        note(f"{ckpt} already has codec tables (model id {model_id_of_file(ckpt)}; {how}); nothing to do. "
             "--calib DIR rebuilds them")
        return
    before = model_id_of_file(ckpt) if had else None
    with console.status("building codec tables"):
        mid = finalize_checkpoint(ckpt, calib, replace=force)
    if mid == before:
        console.print(f"tables unchanged in {ckpt}  (model id {mid})", highlight=False)
    else:
        console.print(f"[green]wrote tables into[/green] {ckpt}  (model id {mid})", highlight=False)


from .trt_cli import register  # noqa: E402

register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
