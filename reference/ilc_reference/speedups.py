"""Opt-in training speed-ups for GPUs: mixed precision, channels_last, torch.compile.

They are applied to a built model from the outside (instance-level forward wrappers), so the
model code and its state_dict keys stay as they are.

Mixed precision policy (why: a latent or a scale computed in 8 mantissa bits moves the
quantisation and the rate by whole bins, and the ILC's inverse must stay an exact inverse):
  - low precision: the conv trunks of the coupling subnets (forward direction only) and the
    conv trunks of the baseline's analysis/synthesis;
  - fp32: the last layer of every such stack (the coupling's scale/shift, the latent y,
    x_hat), GDN, exp in the couplings (the scale comes out of an fp32 layer), the Haar and
    1x1 mixes, the whole inverse transform, the hyperprior and every likelihood.
"""
from __future__ import annotations

import torch
from torch import nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _is_gdn(m: nn.Module) -> bool:
    return type(m).__name__ == "GDN"


def _mixed_sequential(seq: nn.Sequential, device_type: str, dtype, gate=None):
    """forward for seq: every layer but the last (and GDN) under autocast, those in fp32."""
    layers = list(seq)
    orig = seq.forward

    def forward(x):
        if gate is not None and not gate["on"]:
            return orig(x)
        h = x
        for i, m in enumerate(layers):
            low = i < len(layers) - 1 and not _is_gdn(m)
            with torch.autocast(device_type, dtype=dtype, enabled=low):
                h = m(h if low else h.float())
        return h

    return forward


def _gated(forward, gate: dict):
    def wrapped(*a, **k):
        gate["on"] = True
        try:
            return forward(*a, **k)
        finally:
            gate["on"] = False

    return wrapped


def apply_amp(model: nn.Module, amp: str, device: torch.device) -> int:
    """Install the mixed-precision wrappers; returns how many stacks run in low precision."""
    if amp == "off":
        return 0
    dtype = AMP_DTYPES[amp]
    n = 0
    f = getattr(model, "f", None)
    if f is not None:  # ILC: couplings' subnets, forward direction only (inverse stays fp32)
        for m in f.modules():
            if type(m).__name__ == "AffineCoupling":
                gate = {"on": False}
                m.forward = _gated(m.forward, gate)
                for sub in (m.F, m.HG):
                    sub.forward = _mixed_sequential(sub, device.type, dtype, gate)
                    n += 1
    for name in ("g_a", "g_s"):  # baseline
        seq = getattr(model, name, None)
        if isinstance(seq, nn.Sequential):
            seq.forward = _mixed_sequential(seq, device.type, dtype)
            n += 1
    return n


def compile_model(model: nn.Module, mode: str | None = None, backend: str = "inductor") -> int:
    """torch.compile (in place: state_dict keys unchanged) the couplings / baseline transforms.

    Crops of several sizes compile one graph each (dynamic=False keeps them specialised).
    Returns how many modules were compiled.
    """
    targets = [m for m in model.modules() if type(m).__name__ == "AffineCoupling"]
    targets += [getattr(model, n) for n in ("g_a", "g_s") if isinstance(getattr(model, n, None), nn.Module)]
    for m in targets:
        m.compile(dynamic=False, mode=mode, backend=backend)
    return len(targets)


def to_channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)
