"""Finding models: shipped checkpoints, ONNX export folders, engine folders; choosing a backend.

Torch-free, so a deployment box can resolve a model id from a file header.

The rule every `ilc-run` command follows (docs/usage.md, "Finding models"):

- ``--model`` is a checkpoint (.safetensors), an ONNX export folder, an engine folder, or the
  name of a shipped model (``ilc-q2``, ``baseline-q1``). Without it, ``-q Q`` names the shipped
  ``ilc-qQ`` (default 2); ``decompress`` takes the model id from each file instead.
- The backend follows from ``--backend``, else from what ``--model`` is: the registered backend
  that loads that kind of source (checkpoint: torch, export folder: onnxruntime, engine
  folder: tensorrt). A checkpoint whose backend cannot run here (torch without PyTorch), or
  with a precision asked, goes to the other backends, in the registry's order, with an export
  of the same model.
- An export or engine folder for a model given as a checkpoint, a name or a model id is found
  by its model id on the search path: the folders in ``$ILC_MODEL_PATH`` (``os.pathsep``
  separated), then ``./engines``, then the source checkout's ``engines/`` (searched recursively
  for manifest.json); checkpoints are looked up among the shipped ones and on the same path.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..backends import registry
from ..backends.base import CHECKPOINT, ONNX_EXPORT, BackendSpec
from ..contract.encoder_addon import addon_path, is_encoder_addon
from ..contract.errors import IlcError
from ..contract.files import sha256_file
from ..contract.manifest import (ENGINE_FORMAT, MANIFEST_NAME, ONNX_FORMAT, PRECISIONS, manifest_format, peek_manifest,
                                 read_manifest)
from ..contract.model_id import TABLE_PREFIX, model_id_of_file
from ..contract.safetensors import read_header

DEFAULT_QUALITY = 2
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: environment variable: extra folders (or files) to search for models, os.pathsep separated
MODEL_PATH_ENV = "ILC_MODEL_PATH"
#: the package whose data holds the shipped checkpoints (located, never imported: it trains)
SHIPPED_PACKAGE = "ilc_reference"
_EXPECTED = "a checkpoint (.safetensors), an ONNX export folder, an engine folder or a shipped model name"


class ModelNotFound(IlcError, LookupError):
    """No model matches what was asked (a name, a quality, a model id)."""


class ModelError(IlcError, ValueError):
    """A path given as a model is not one (wrong kind of file, damaged checkpoint)."""


class UsageError(IlcError, ValueError):
    """Options that contradict each other or name nothing valid."""


@lru_cache(maxsize=1)
def checkpoint_dir() -> Path:
    """Where the shipped checkpoints live: the reference package's data folder."""
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    where = list(spec.submodule_search_locations or []) if spec is not None else []
    if not where:
        return PROJECT_ROOT / "reference" / SHIPPED_PACKAGE / "checkpoints"
    return Path(where[0]) / "checkpoints"


def checkpoints_in(folder: Path, recursive: bool = False) -> list[Path]:
    """The checkpoints in `folder`: its .safetensors files, less the encoder add-ons next to them."""
    found = folder.rglob("*.safetensors") if recursive else folder.glob("*.safetensors")
    return sorted(p for p in found if not is_encoder_addon(p))


def shipped_checkpoints(kind: str | None = None) -> list[Path]:
    """The shipped checkpoints, or those of one kind (``ilc``, ``baseline``): ``<kind>-q<N>``."""
    return [p for p in checkpoints_in(checkpoint_dir()) if kind is None or p.name.startswith(f"{kind}-q")]


def shipped_checkpoint(quality: int = DEFAULT_QUALITY, kind: str = "ilc") -> Path:
    p = checkpoint_dir() / f"{kind}-q{quality}.safetensors"
    if not p.exists():
        have = [x.stem for x in shipped_checkpoints()]
        raise ModelNotFound(f"no shipped model {p.stem!r}; shipped: {', '.join(have) or 'none'}")
    return p


def shipped_qualities(kind: str = "ilc") -> list[int]:
    out = []
    for p in shipped_checkpoints(kind):
        try:
            out.append(int(p.stem.split("-q")[-1]))
        except ValueError:
            pass
    return sorted(out)


def is_shipped(path: str | Path) -> bool:
    """Is `path` one of the checkpoints shipped with the package (in its checkpoints folder)?"""
    try:
        return Path(path).resolve().parent == checkpoint_dir().resolve()
    except OSError:
        return False


@lru_cache(maxsize=64)
def _id_of(path: str, mtime: float, size: int) -> str:
    return model_id_of_file(Path(path))


def model_id(path: Path) -> str:
    """Model id of a checkpoint file, or of an export/engine folder (from its manifest)."""
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_NAME).exists():
            raise ModelNotFound(f"{path}: no {MANIFEST_NAME} (not an ONNX export or engine folder)")
        return read_manifest(path, None)["model_id"]
    st = path.stat()
    return _id_of(str(path), st.st_mtime, st.st_size)


def encoder_addon_of(path: Path) -> str | None:
    """sha256 of the encoder add-on a checkpoint (next to it) or an export/engine folder (its
    manifest) encodes with, or None. Not part of the model id: what it changes is the files
    an encoder writes, never how they decode."""
    path = Path(path)
    if path.is_dir():
        rec = (peek_manifest(path) or {}).get("encoder_addon")
        return rec.get("sha256") if isinstance(rec, dict) else None
    p = addon_path(path)
    return sha256_file(p) if p.is_file() else None


def default_engine_root() -> Path:
    return PROJECT_ROOT / "engines"


def search_roots(extra: list[Path] | None = None) -> list[Path]:
    """Where models are looked up by id, in order: `extra`, $ILC_MODEL_PATH, ./engines, the
    source checkout's engines/ (existing entries only, each once)."""
    roots = [Path(p) for p in (extra or [])]
    roots += [Path(p) for p in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep) if p]
    roots += [Path("engines"), default_engine_root()]
    out, seen = [], set()
    for r in roots:
        try:
            key = r.resolve()
        except OSError:
            continue
        if key not in seen and r.exists():
            seen.add(key)
            out.append(r)
    return out


def torch_available() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def normalise_backend(backend: str | None) -> str | None:
    """None stays None (choose automatically); aliases map to names; anything else is an error."""
    if backend is None or backend == "auto":
        return None
    name = registry.canonical(backend)
    if name is None:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(registry.names())} "
                         "(or leave --backend out to pick one)")
    return name


def _checkpoint_backend() -> BackendSpec:
    return registry.for_source(CHECKPOINT)


def _export_backends() -> list[BackendSpec]:
    """The backends that run a checkpoint's exports, in preference order."""
    return [s for s in registry.specs().values() if s.source != CHECKPOINT]


def _runs_checkpoint(precision: str | None) -> bool:
    """Does automatic selection run a checkpoint itself? Only when its backend runs here and
    no precision is asked (a precision selects an export's graphs)."""
    return precision is None and _checkpoint_backend().available()


# -- what a path is --------------------------------------------------------------------------
def source_kind(path: str | Path) -> str:
    """'checkpoint', 'onnx' or 'engines' for a model path; ModelError naming the path otherwise.

    A checkpoint is checked without torch: a safetensors header with the model config, codec
    tables, and every tensor inside the file (its model id is computed)."""
    path = Path(path)
    if path.name == MANIFEST_NAME and path.is_file():
        path = path.parent
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder (expected {_EXPECTED})")
    if path.is_dir():
        fmt = manifest_format(path)
        if fmt == ONNX_FORMAT:
            return "onnx"
        if fmt == ENGINE_FORMAT:
            return "engines"
        if not (path / MANIFEST_NAME).exists():
            raise ModelError(f"{path}: folder has no manifest.json (expected an ONNX export folder from "
                             "`ilc-export onnx` or an engine folder from `ilc-export trt`)")
        raise ModelError(f"{path}: manifest.json is not an ILC ONNX export or engine manifest")
    check_checkpoint(path)
    return "checkpoint"


def check_checkpoint(path: Path) -> dict:
    """ModelError unless `path` is a safetensors ILC checkpoint with codec tables (torch-free);
    returns its safetensors metadata."""
    what = f"{path}: not an ILC checkpoint (expected a .safetensors file from ilc-train or `ilc-export tables`)"
    if not path.exists():
        raise ModelError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise ModelError(f"{what}: a folder")
    try:
        with open(path, "rb") as f:
            header, _ = read_header(f, path, path.stat().st_size)
    except ValueError:
        raise ModelError(f"{what}: not a safetensors file") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or "config" not in meta:
        raise ModelError(f"{what}: safetensors file without an ILC model config")
    if not any(k.startswith(TABLE_PREFIX) for k in header):
        raise ModelError(f"{path}: checkpoint has no codec tables; run `ilc-export tables --ckpt {path}`")
    try:
        model_id(path)  # every tensor must lie inside the file (a truncated download fails here)
    except ValueError as e:
        raise ModelError(f"{what}: {str(e).removeprefix(f'{path}: ')}") from None
    return meta


def checkpoint_name(path: Path) -> str:
    """The model name in a checkpoint's config (the file's stem when it has none); torch-free."""
    meta = check_checkpoint(Path(path))
    try:
        name = json.loads(meta["config"]).get("name")
    except (ValueError, AttributeError, KeyError):
        name = None
    return name if isinstance(name, str) and name and "/" not in name else Path(path).stem


def _shipped_by_name(name: str) -> Path | None:
    p = checkpoint_dir() / f"{name}.safetensors"
    return p if "/" not in name and os.sep not in name and p.is_file() else None


def _manifest_precision_ok(folder: Path, kind: str, precision: str | None) -> bool:
    if precision is None:
        return True
    m = peek_manifest(folder)
    if m is None:
        return False
    if kind == "onnx":
        return precision in (m.get("precisions") or {})
    return m.get("precision", "fp32") == precision


def _candidates(kind: str, roots: list[Path], precision: str | None) -> list[Path]:
    out: list[Path] = []
    if kind == "checkpoint":
        out += shipped_checkpoints()
    want = ONNX_FORMAT if kind == "onnx" else ENGINE_FORMAT
    for root in roots:
        if root.is_file():
            if kind == "checkpoint" and root.suffix == ".safetensors" and not is_encoder_addon(root):
                out.append(root)
            elif root.name == MANIFEST_NAME and manifest_format(root.parent) == want:
                out.append(root.parent)
            continue
        if kind == "checkpoint":
            out += checkpoints_in(root, recursive=True)
        else:
            out += [m.parent for m in sorted(root.rglob(MANIFEST_NAME))
                    if manifest_format(m.parent) == want and _manifest_precision_ok(m.parent, kind, precision)]
    return out


def find_model(model_id_hex: str, backend: str | None, search: list[Path] | None = None,
               precision: str | None = None) -> tuple[str, Path]:
    """(backend, source) for a model id: the checkpoint (torch), ONNX export folder
    (onnxruntime) or engine folder (tensorrt) holding it. backend None: torch when PyTorch is
    installed and a checkpoint is found, else onnxruntime, else tensorrt."""
    roots = search_roots(search)
    if backend is None:
        order = ([_checkpoint_backend()] if _runs_checkpoint(precision) else []) + _export_backends()
    else:
        order = [registry.get(backend)]
    for spec in order:
        for c in _candidates(spec.source, roots, precision if spec.source != CHECKPOINT else None):
            try:
                if model_id(c) == model_id_hex:
                    return spec.name, c
            except (OSError, KeyError, ValueError, ModelNotFound):
                continue
    where = ", ".join(str(r) for r in roots) or "no search folders exist"
    what = f"no {backend} model" if backend else "no model"
    prec = f" with {precision} graphs" if precision and (backend is None or registry.get(backend).source != CHECKPOINT) else ""
    hint = ""
    ck = _checkpoint_backend()
    if backend is None and not ck.available():
        export = registry.for_source(ONNX_EXPORT)
        hint = (f" ({ck.requires_name} is not installed: an ONNX export of the model is needed; export one with "
                f"`{export.make}`)")
    raise ModelNotFound(f"{what} with id {model_id_hex}{prec} found (searched shipped checkpoints and {where}; "
                        f"add folders with {MODEL_PATH_ENV}){hint}; pass --model")


@dataclass(frozen=True)
class Resolved:
    backend: str
    source: Path
    name: str  # a short name for messages: the shipped name, else the path


def resolve(model: str | Path | None = None, quality: int | None = None, backend: str | None = None,
            precision: str | None = None, search: list[Path] | None = None) -> Resolved:
    """Apply the module's rule: which backend loads which file for these options."""
    backend = normalise_backend(backend)
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if model is not None and quality is not None:
        raise UsageError("give either --model or --quality, not both (--quality picks a shipped model)")
    if model is None:
        q = DEFAULT_QUALITY if quality is None else quality
        have = shipped_qualities()
        if q not in have:
            raise UsageError(f"no shipped quality {q}; shipped qualities: {', '.join(map(str, have)) or 'none'}")
        model, name = shipped_checkpoint(q), f"ilc-q{q}"
    else:
        shipped = _shipped_by_name(str(model)) if not Path(model).exists() else None
        model, name = (shipped, str(model)) if shipped is not None else (Path(model), str(model))
    kind = source_kind(model)
    if kind != CHECKPOINT:
        spec = registry.for_source(kind)
        if backend is not None and backend != spec.name:
            raise UsageError(f"{model} is {spec.source_noun}: it runs on --backend {spec.name}, not {backend}")
        return Resolved(spec.name, Path(model), name)
    ck = _checkpoint_backend()
    exports = _export_backends()
    if backend == ck.name or (backend is None and _runs_checkpoint(precision)):
        if not ck.available():
            raise UsageError(f"the {ck.name} backend needs {ck.requires_name}, which is not installed: {ck.install}, "
                             f"or use --backend {exports[0].name} with an ONNX export")
        return Resolved(ck.name, Path(model), name)
    # a checkpoint for another backend: its export / engines, found by id, in preference order
    mid = model_id(model)
    tries = [registry.get(backend)] if backend is not None else exports if precision is None else exports[:1]
    for spec in tries:
        try:
            be, src = find_model(mid, spec.name, search, precision)
            return Resolved(be, src, name)
        except ModelNotFound:
            continue
    spec = tries[0]
    how = f"`{spec.make} --ckpt {model}" + (" --fp16`" if precision == "fp16" else "`")
    why = f"{ck.requires_name} is not installed, so " if backend is None and not ck.available() else ""
    prec = f" with {precision} graphs" if precision else ""
    where = ", ".join(str(r) for r in search_roots(search)) or "./engines (missing)"
    raise ModelNotFound(
        f"{why}{name} needs {spec.source_noun}{prec}, and none with its id ({mid}) was found in {where}: make one "
        f"with {how}, put it under ./engines or on {MODEL_PATH_ENV}, or pass --model FOLDER"
    )
