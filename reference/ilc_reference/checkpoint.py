"""Weights on disk: safetensors + a JSON config (metadata carries the config too).

Keys under ``tables.`` are the codec's integer tables (written by ilc_export); the
reference model ignores them.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save

from ilc_export.contract.files import write_atomic
from ilc_export.contract.model_id import TABLE_PREFIX

from .config import ModelConfig
from .model import build_model

__all__ = ["TABLE_PREFIX", "checkpoint_dir", "load_model", "read_config", "save_checkpoint"]


def save_checkpoint(model, path: str | Path, extra_tensors: dict | None = None, info: dict | None = None) -> Path:
    """Write <path>.safetensors and <path>.json atomically."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v
    meta = {"config": model.cfg.to_json(), "info": json.dumps(info or {}, sort_keys=True)}
    write_atomic(path, save(tensors, metadata=meta))
    card = {"config": json.loads(model.cfg.to_json()), "info": info or {}}
    write_atomic(path.with_suffix(".json"), (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_config(path: str | Path) -> ModelConfig:
    from safetensors import safe_open

    with safe_open(str(Path(path)), framework="numpy") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: not an ILC checkpoint (no config in safetensors metadata)")
    return ModelConfig.from_dict(json.loads(meta["config"]))


def load_model(path: str | Path, map_location: str = "cpu"):
    """Build the model described by a checkpoint and load its float weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    cfg = read_config(path)
    model = build_model(cfg)
    sd = {k: v for k, v in load_file(str(path), device=map_location).items() if not k.startswith(TABLE_PREFIX)}
    model.load_state_dict(sd)
    model.eval()
    return model


def checkpoint_dir() -> Path:
    """Where the shipped checkpoints live (package data)."""
    return Path(__file__).parent / "checkpoints"

