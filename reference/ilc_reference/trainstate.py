"""Training state on disk: one pickled dict split into parts under a per-file size cap.

Layout in a run folder:
  state.json                 index: step, wall, exactness, parts with sizes and sha256
  state-<gen>.000, .001 ...  consecutive byte ranges of one ``torch.save`` blob

Why parts: the transfer limits of borrowed machines cap the size of each file, and a split
blob keeps every tensor (of any size) exact without a second serializer. Why an index
written last: a kill during a save leaves the previous index and its parts intact, so a run
folder always holds one complete state (at most the steps since the last save are lost).

``moments="bf16"`` stores the Adam moments in bfloat16 (a third less to carry); such a
state resumes approximately, and the index says so (``exact: false``). fp16 is not offered:
the second moment (~1e-10 late in training) underflows to 0 in fp16, which blows up the
step size on resume.
"""
from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import torch

from ilc_export.contract.files import write_atomic

INDEX = "state.json"
LEGACY = "state.pt"
FORMAT = "ilc-train-state/1"
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def write_parts(out: Path, stem: str, blob: bytes | memoryview, part_bytes: int) -> list[dict]:
    """Write blob as <stem>.000, .001, ... of at most part_bytes each (at least one part, even for
    an empty blob), each atomically; returns their index entries (file, bytes, sha256)."""
    parts = []
    for i, lo in enumerate(range(0, max(len(blob), 1), part_bytes)):
        chunk = blob[lo : lo + part_bytes]
        name = f"{stem}.{i:03d}"
        write_atomic(out / name, chunk)
        parts.append({"file": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    return parts


def read_parts(folder: Path, parts: list[dict], index_name: str) -> bytes:
    """The bytes of the parts an index lists, each checked against its size and sha256."""
    chunks = []
    for p in parts:
        data = (folder / p["file"]).read_bytes()
        if len(data) != p["bytes"] or hashlib.sha256(data).hexdigest() != p["sha256"]:
            raise ValueError(f"{folder / p['file']}: size or checksum does not match {index_name}")
        chunks.append(data)
    return b"".join(chunks)


def compact_moments(opt_state: dict, dtype=torch.bfloat16) -> dict:
    """A copy of an optimizer state_dict with floating moments cast to dtype."""
    state = {
        k: {n: (v.to(dtype) if n in MOMENT_KEYS and torch.is_tensor(v) and v.is_floating_point() else v)
            for n, v in s.items()}
        for k, s in opt_state["state"].items()
    }
    return {**opt_state, "state": state}


def save_state(out: str | Path, state: dict, part_bytes: int = 0, moments: str = "fp32") -> dict:
    """Write state (a dict with at least "step") as parts of at most part_bytes (0 = one part).

    Returns the index. Parts of older saves, temporary files and a legacy state.pt are
    removed only after the new index is in place.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if moments not in ("fp32", "bf16"):
        raise ValueError(f"moments must be fp32 or bf16, not {moments!r}")
    exact = moments == "fp32"
    if not exact and "opt" in state:
        state = {**state, "opt": compact_moments(state["opt"])}
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getbuffer()
    size = part_bytes if part_bytes and part_bytes > 0 else max(len(blob), 1)
    gen = f"{int(state['step']):08d}-{uuid.uuid4().hex[:6]}"
    parts = write_parts(out, f"state-{gen}", blob, size)
    index = {
        "format": FORMAT, "step": int(state["step"]), "wall": float(state.get("wall", 0.0)),
        "exact": exact, "moments": moments, "has_opt": "opt" in state, "bytes": len(blob), "parts": parts,
    }
    write_atomic(out / INDEX, (json.dumps(index, indent=1) + "\n").encode())
    keep = {p["file"] for p in parts}
    for p in out.iterdir():
        if (p.name.startswith("state-") and p.name not in keep) or p.name.endswith(".tmp") or p.name == LEGACY:
            p.unlink(missing_ok=True)
    return index


def read_index(out: str | Path) -> dict | None:
    p = Path(out) / INDEX
    return json.loads(p.read_text()) if p.exists() else None


def state_files(out: str | Path) -> list[Path]:
    """The files that make up the current state of a run folder (index first)."""
    out = Path(out)
    index = read_index(out)
    if index is not None:
        return [out / INDEX] + [out / p["file"] for p in index["parts"]]
    return [out / LEGACY] if (out / LEGACY).exists() else []


def load_state(out: str | Path) -> dict | None:
    """The state of a run folder (split format, else a legacy state.pt), or None."""
    out = Path(out)
    index = read_index(out)
    if index is None:
        legacy = out / LEGACY
        return torch.load(legacy, map_location="cpu", weights_only=False) if legacy.exists() else None
    if index.get("format") != FORMAT:
        raise ValueError(f"{out / INDEX}: unknown state format {index.get('format')!r}")
    state = torch.load(io.BytesIO(read_parts(out, index["parts"], INDEX)), map_location="cpu", weights_only=False)
    state["_exact"] = index["exact"]
    return state
