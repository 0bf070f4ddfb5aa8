"""The layers hold: the runtime stands alone, no import runs back up, no import cycle.

docs/architecture.md draws the layers. Statically (every .py file of the package, the
reference package, scripts and benchmarks, imports inside functions included):

- no import cycle between modules;
- ``ilc_export`` imports only downwards: contract <- codec <- backends <- pipeline <- scale
  <- {export, verify} <- cli, and export and verify do not import each other;
- the runtime (contract, codec, backends, pipeline, scale) never imports the reference
  package (``ilc_reference``); only the torch backend's loader does, to run the model it
  defines; the reference package itself imports nothing of ``ilc_export`` but the contract;
- nothing in the package imports scripts or benchmarks.

And dynamically: an ONNX Runtime compress + decompress through ``ilc-run`` imports none of
the heavy or tooling modules (``python -X importtime``).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE

#: ilc_export's layers, bottom first; a module may import its own layer and those below
LAYERS = [
    ("ilc_export.contract",),
    ("ilc_export.codec",),
    ("ilc_export.backends",),
    ("ilc_export.pipeline",),
    ("ilc_export.scale",),
    ("ilc_export.export", "ilc_export.verify"),
    ("ilc_export.cli",),
]
RUNTIME = ("ilc_export.contract", "ilc_export.codec", "ilc_export.backends", "ilc_export.pipeline", "ilc_export.scale")
#: runtime modules that may import the reference package: the torch backend runs its model
REFERENCE_USERS = ("ilc_export.backends.pytorch.loader",)
#: what an ONNX Runtime round trip through ilc-run must not import
HEAVY = ("torch", "onnx", "onnxslim", "polygraphy", "tensorrt", "tensorrt_rtx", "matplotlib", "ilc_reference",
         "ilc_export.export", "ilc_export.verify")


# --------------------------------------------------------------------------- the import graph
def _module_files() -> dict[str, Path]:
    """module name -> file, for the package, the reference package, scripts and benchmarks
    (scripts and benchmarks import each other as top-level modules: ``scripts.x`` is ``x``
    to its neighbours, so each folder is a namespace of its own)."""
    out: dict[str, Path] = {}
    for base, pkg_root in ((ROOT, "ilc_export"), (ROOT / "reference", "ilc_reference")):
        for p in sorted((base / pkg_root).rglob("*.py")):
            parts = list(p.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = p
    for folder in ("scripts", "benchmarks"):
        for p in sorted((ROOT / folder).glob("*.py")):
            out[f"{folder}:{p.stem}"] = p
    return out


def _resolve(name: str, modules: dict[str, Path], folder: str | None) -> str | None:
    """The project module an import of `name` loads, or None (not a .py file of the project)."""
    if folder is not None and f"{folder}:{name.split('.')[0]}" in modules:
        return f"{folder}:{name.split('.')[0]}"
    return name if name in modules else None


def _is_other_module(package: str, name: str, modules: dict[str, Path]) -> bool:
    """Is `name` in `package` a module that is no .py file (the codec's C extension)?"""
    p = modules.get(package)
    return f"{package}.{name}" not in modules and p is not None and p.name == "__init__.py" and any(p.parent.glob(f"{name}.*"))


def _imports(mod: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that `mod` imports anywhere in its file."""
    folder = mod.split(":")[0] if ":" in mod else None
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names
                     if not _is_other_module(prefix, a.name, modules)]
        for n in names:
            target = _resolve(n, modules, folder)
            if target is not None and target != mod:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _module_files()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _layer(mod: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(mod == n or mod.startswith(n + ".") for n in names):
            return i
    return None


def _package(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def _within(mod: str, prefixes) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_package(graph):
    assert {"ilc_export.contract.geometry", "ilc_export.cli.run_cli", "ilc_reference.model"} <= set(graph)
    assert "ilc_export.contract.geometry" in graph["ilc_export.codec.bitstream"]
    assert "ilc_export.backends.base" in graph["ilc_export.backends.onnxrt"]  # relative `from ..base import`


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_no_import_runs_up_a_layer(graph):
    bad = []
    for mod, targets in graph.items():
        a = _layer(mod)
        if a is None:
            continue
        for t in targets:
            b = _layer(t)
            peer = b == a and _package(t) != _package(mod)  # export and verify share a floor, apart
            if b is not None and (b > a or peer):
                bad.append(f"{mod} -> {t}")
    assert bad == []


def test_runtime_never_imports_the_reference_package(graph):
    bad = [f"{m} -> {t}" for m, ts in graph.items() if _within(m, RUNTIME) and m not in REFERENCE_USERS
           for t in ts if _within(t, ("ilc_reference",))]
    assert bad == []


def test_reference_package_imports_only_the_contract(graph):
    bad = [f"{m} -> {t}" for m, ts in graph.items() if _within(m, ("ilc_reference",))
           for t in ts if _within(t, ("ilc_export",)) and not _within(t, ("ilc_export.contract",))]
    assert bad == []


def test_package_never_imports_scripts_or_benchmarks(graph):
    bad = [f"{m} -> {t}" for m, ts in graph.items() if not m.startswith(("scripts:", "benchmarks:"))
           for t in ts if t.startswith(("scripts:", "benchmarks:"))]
    assert bad == []


def test_contract_imports_only_stdlib_and_numpy():
    allowed = set(sys.stdlib_module_names) | {"numpy", "__future__"}
    bad = []
    for p in sorted((ROOT / "ilc_export" / "contract").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            bad += [f"{p.name}: {t}" for t in tops if t not in allowed]
    assert bad == []


# --------------------------------------------------------------------------- what ilc-run imports
def _imported(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    out = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                out.add(name)
    return out


def _heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if _within(m, HEAVY))


@pytest.fixture(scope="module")
def tiny_export(tiny_ckpt, tmp_path_factory):
    pytest.importorskip("onnx")
    from ilc_export.export.onnx_export import export_onnx

    return export_onnx(tiny_ckpt, tmp_path_factory.mktemp("arch") / "onnx")


def _c_coder_built() -> bool:
    from ilc_export.codec import entropy

    return entropy._importable("c")


def test_onnxruntime_round_trip_imports_nothing_heavy(tiny_export, tmp_path):
    from PIL import Image

    Image.open(SAMPLE).convert("RGB").crop((0, 0, 96, 80)).save(tmp_path / "a.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "reference")]), "ILC_MODEL_PATH": ""}
    seen = {}
    for cmd in (["compress", tmp_path / "a.png", "-o", tmp_path / "a.ilc"],
                ["decompress", tmp_path / "a.ilc", "-o", tmp_path / "b.png"]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ilc_export.cli.run_cli", *map(str, cmd),
                            "-m", str(tiny_export), "-b", "onnxruntime"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        mods = _imported(r.stderr)
        assert "ilc_export.backends.onnxrt.runner" in mods and "onnxruntime" in mods  # the parse works
        seen[cmd[0]] = _heavy(mods)
        if _c_coder_built():  # the C coder codes: constriction is never imported
            assert "constriction" not in mods, cmd[0]
    assert (tmp_path / "b.png").is_file()
    assert seen == {"compress": [], "decompress": []}
