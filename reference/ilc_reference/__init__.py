"""Reference Invertible Lossy Compression (ILC) model in PyTorch.

Imports are lazy so that torch-free modules (``config``, ``zsample``) can be used on a
deployment box without PyTorch.
"""
from .config import PAD_MULTIPLE, ModelConfig, tiny_config

__all__ = ["PAD_MULTIPLE", "ModelConfig", "tiny_config", "ILC", "Baseline", "build_model"]


def __getattr__(name):
    if name in ("ILC", "Baseline", "build_model"):
        from . import model

        return getattr(model, name)
    raise AttributeError(name)
