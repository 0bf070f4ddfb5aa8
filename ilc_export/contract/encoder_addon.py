"""Encoder add-ons: weights that change what an encoder sends, never what decodes it.

An add-on is a safetensors file next to the checkpoint it serves, ``<stem>.encoder.safetensors``,
whose metadata names that checkpoint's model id. It is not part of the model id (the id names
what a decoder needs): files made with or without it carry the same id and decode the same
way, with the same model, on every backend. The one kind so far is a latent correction
y' = y + h(y, z) applied after the hyperprior has seen y (the forward graph's ``y`` output).

numpy and the standard library only; reading the weights into a network is the reference's job.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import IlcError
from .safetensors import read_header

#: file name suffix of an add-on, in place of the checkpoint's ``.safetensors``
ENCODER_ADDON_SUFFIX = ".encoder.safetensors"
#: metadata ``kind`` of a latent correction (the only kind so far)
LATENT_CORRECTION = "latent-correction"


class AddonError(IlcError, ValueError):
    """An add-on that is not one, or does not serve the checkpoint it sits next to."""


def is_encoder_addon(path: str | Path) -> bool:
    """Is `path` named as an encoder add-on (and so never a checkpoint)?"""
    return Path(path).name.endswith(ENCODER_ADDON_SUFFIX)


def addon_path(ckpt: str | Path) -> Path:
    """Where the add-on of checkpoint `ckpt` sits: ``ilc-q2.safetensors`` -> ``ilc-q2.encoder.safetensors``."""
    ckpt = Path(ckpt)
    stem = ckpt.name[: -len(".safetensors")] if ckpt.name.endswith(".safetensors") else ckpt.name
    return ckpt.with_name(stem + ENCODER_ADDON_SUFFIX)


def read_addon_meta(path: str | Path, model_id: str | None = None) -> dict:
    """The add-on's metadata: ``kind``, ``serves`` (a model id), ``arch`` and ``info`` (dicts).

    With `model_id`, an add-on made for another model is refused (AddonError): its
    corrections were learnt against that model's decoder."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header, _ = read_header(f, path, path.stat().st_size)
    except ValueError as e:
        raise AddonError(f"encoder add-on {e}") from e
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != LATENT_CORRECTION or "serves" not in meta:
        raise AddonError(f"{path}: not an encoder add-on (no kind {LATENT_CORRECTION!r} and model id in its metadata)")
    try:
        out = {"kind": meta["kind"], "serves": meta["serves"],
               "arch": json.loads(meta.get("arch", "{}")), "info": json.loads(meta.get("info", "{}"))}
    except json.JSONDecodeError as e:
        raise AddonError(f"{path}: encoder add-on metadata is not JSON ({e})") from e
    if model_id is not None and out["serves"] != model_id:
        raise AddonError(f"{path} serves model {out['serves'][:8]}…, not {model_id[:8]}… of the checkpoint next to it; "
                         "move it away or retrain it for this model")
    return out
