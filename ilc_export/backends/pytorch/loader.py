"""The PyTorch loader: checks the device and precision, loads the checkpoint's float model.

The torch backend is the one plug-in that needs PyTorch and the reference model
(``ilc_reference``): it runs the checkpoint's modules directly. Both are imported only when
a model is loaded.
"""
from __future__ import annotations

from pathlib import Path

from ...contract.model_id import model_id_of_file
from ..base import BackendError
from . import SPEC
from .runner import TorchRunner


def resolve_device(device: str | None):
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, or a one-line BackendError saying why not."""
    import torch

    spec = "cpu" if device is None else str(device).strip().lower()
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise BackendError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if dev.type == "cpu":
        return torch.device("cpu")
    if torch.version.cuda is None:
        raise BackendError(f"CUDA is not available in this torch build (torch {torch.__version__}, CPU-only); "
                           "use --device cpu")
    if not torch.cuda.is_available():
        raise BackendError(f"no CUDA device is usable (torch {torch.__version__} built for CUDA {torch.version.cuda}; "
                           "check the driver and CUDA_VISIBLE_DEVICES); use --device cpu")
    n = torch.cuda.device_count()
    index = 0 if dev.index is None else dev.index
    if index >= n:
        raise BackendError(f"no device cuda:{index}: {n} CUDA device(s) visible (cuda:0 .. cuda:{n - 1})")
    return torch.device("cuda", index)


def load(source: Path, device: str | None = "cpu", threads: int | None = None, precision: str | None = None,
         providers=None, refine: int = 0, refine_lr: float | None = None, encoder_addon: bool = True,
         **_) -> TorchRunner:
    """Load checkpoint `source` (.safetensors) on `device` (cpu, cuda, cuda:N). refine: gradient
    steps of encoder-side latent refinement per tile (0: none; see ilc_reference.refine).
    encoder_addon: use the checkpoint's encoder add-on (``<stem>.encoder.safetensors`` next to
    it, as the ONNX export does), where there is one."""
    source = Path(source)
    if refine is None or int(refine) != refine or refine < 0:
        raise BackendError(f"--refine takes a number of steps >= 0, got {refine!r}")
    if refine_lr is not None and not refine_lr > 0:
        raise BackendError(f"--refine-lr must be > 0, got {refine_lr!r}")
    if providers:
        raise BackendError("--provider chooses ONNX Runtime execution providers; the torch backend takes --device")
    if source.is_dir():
        raise BackendError(f"the torch backend needs a checkpoint file (.safetensors), got folder {source}")
    precision = precision or "fp32"
    if precision not in SPEC.precisions:
        raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(SPEC.precisions)}")
    dev = resolve_device(device or "cpu")
    if precision == "fp16" and dev.type != "cuda":
        raise BackendError("fp16 on the torch backend needs a CUDA device (--device cuda); on the CPU it runs fp32")
    import torch
    from ilc_reference.checkpoint import load_model

    if threads:
        torch.set_num_threads(threads)
    try:
        model = load_model(source).to(dev)
    except FileNotFoundError as e:
        raise BackendError(str(e)) from e
    model_id = model_id_of_file(source)
    runner = TorchRunner(source, model_id, model, dev, precision)
    if encoder_addon:
        from ilc_reference.encoder_addon import addon_for

        runner.correction = addon_for(source, model_id, dev)
    if refine:
        from functools import partial

        from ilc_reference.refine import DEFAULT_LR, refine_latents

        runner.refine_fn = partial(refine_latents, iters=int(refine), lr=refine_lr or DEFAULT_LR)
    return runner
