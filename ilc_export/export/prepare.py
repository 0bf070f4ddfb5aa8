"""A checkpoint ready to time or measure: codec tables and an ONNX export, never touching
the original file (training may be writing it). Benchmarks and measurement scripts call
this instead of each finalizing and exporting by hand."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..contract.encoder_addon import addon_path
from ..contract.manifest import read_manifest
from ..contract.model_id import model_id_of_file


def prepare_models(ckpt: Path, onnx_dir: Path | None, tmp: Path, calib: Path | None = None,
                   say: Callable[[str], None] = print) -> tuple[Path, Path, list[str]]:
    """(a copy of `ckpt` in `tmp` with codec tables, an ONNX export folder, warnings).

    The copy gets tables (calibrated on `calib`) when it has none; `onnx_dir` None exports
    the copy into tmp/onnx, else a warning says when the export is of another model."""
    from .tables_build import finalize_checkpoint, stored_tables

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    copy = Path(tmp) / ckpt.name
    warnings: list[str] = []
    shutil.copyfile(ckpt, copy)
    if addon_path(ckpt).is_file():  # the encoder add-on travels with its checkpoint
        shutil.copyfile(addon_path(ckpt), addon_path(copy))
    if not stored_tables(copy):
        say(f"{ckpt.name} has no codec tables: finalizing a copy in {tmp}")
        finalize_checkpoint(copy, calib)
    if onnx_dir is None:
        from .onnx_export import export_onnx

        say("exporting ONNX graphs to a temp folder")
        onnx_dir = export_onnx(copy, Path(tmp) / "onnx")
    else:
        mid = read_manifest(Path(onnx_dir))["model_id"]
        if mid != model_id_of_file(copy):
            warnings.append(f"{onnx_dir} has model id {mid}, the checkpoint {model_id_of_file(copy)}: "
                            "the backends time different models")
            say("warning: " + warnings[-1])
    return copy, Path(onnx_dir), warnings
