"""Finding models: shipped checkpoints, ONNX export folders, engine folders.

Torch-free, so a deployment box can resolve a model id from a file header.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import ilc_reference

DEFAULT_QUALITY = 2
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ModelNotFound(LookupError):
    pass


def checkpoint_dir() -> Path:
    return Path(ilc_reference.__file__).parent / "checkpoints"


def shipped_checkpoint(quality: int = DEFAULT_QUALITY, kind: str = "ilc") -> Path:
    p = checkpoint_dir() / f"{kind}-q{quality}.safetensors"
    if not p.exists():
        have = sorted(x.stem for x in checkpoint_dir().glob("*.safetensors"))
        raise ModelNotFound(f"no shipped model {p.stem!r}; shipped: {', '.join(have) or 'none'}")
    return p


def shipped_qualities(kind: str = "ilc") -> list[int]:
    out = []
    for p in checkpoint_dir().glob(f"{kind}-q*.safetensors"):
        try:
            out.append(int(p.stem.split("-q")[-1]))
        except ValueError:
            pass
    return sorted(out)


@lru_cache(maxsize=64)
def _id_of(path: str, mtime: float) -> str:
    from ..codec.tables import model_id_of_file

    return model_id_of_file(Path(path))


def model_id(path: Path) -> str:
    """Model id of a checkpoint file, or of an export/engine folder (from its manifest)."""
    path = Path(path)
    if path.is_dir():
        m = path / "manifest.json"
        if not m.exists():
            raise ModelNotFound(f"{path}: no manifest.json (not an ONNX export or engine folder)")
        return json.loads(m.read_text())["model_id"]
    return _id_of(str(path), path.stat().st_mtime)


def default_engine_root() -> Path:
    return PROJECT_ROOT / "engines"


def find_model(model_id_hex: str, backend: str, search: list[Path] | None = None) -> Path:
    """Find the checkpoint (torch) or export/engine folder (others) that has this model id."""
    candidates: list[Path] = []
    if backend == "torch":
        candidates += sorted(checkpoint_dir().glob("*.safetensors"))
    roots = list(search or []) + [default_engine_root()]
    for root in roots:
        root = Path(root)
        if root.is_file():
            candidates.append(root)
        elif root.is_dir():
            want = {"onnxruntime": "forward.onnx", "tensorrt": "forward.engine"}.get(backend)
            candidates += [m.parent for m in sorted(root.rglob("manifest.json"))
                           if want is None or any(m.parent.glob(want.split(".")[0] + "*." + want.split(".")[1]))]
    for c in candidates:
        try:
            if model_id(c) == model_id_hex:
                if backend == "torch" and c.is_dir():
                    continue
                return c
        except (OSError, KeyError, ValueError, ModelNotFound):
            continue
    raise ModelNotFound(
        f"no {backend} model with id {model_id_hex} found (searched shipped checkpoints and {', '.join(map(str, roots))}); pass --model"
    )
