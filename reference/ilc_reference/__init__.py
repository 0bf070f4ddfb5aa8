"""Reference Invertible Lossy Compression (ILC) model in PyTorch, and its training.

Imports are lazy so that torch-free modules (``config``, ``zsample``) can be used on a
deployment box without PyTorch.

May import: torch, numpy and ``ilc_export.contract`` (the model's shapes, config, table
prefix), never another ``ilc_export`` package: the model reads the contract's facts, the
runtime never imports this package.
"""
from .config import PAD_MULTIPLE, ModelConfig, tiny_config

__all__ = ["PAD_MULTIPLE", "ModelConfig", "tiny_config", "ILC", "Baseline", "build_model"]


def __getattr__(name):
    if name in ("ILC", "Baseline", "build_model"):
        from . import model

        return getattr(model, name)
    raise AttributeError(name)
