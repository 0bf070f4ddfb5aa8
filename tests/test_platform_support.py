"""The runtime on a Jetson (docs/deploy-jetson.md): Python 3.10, Linux aarch64.

- requires-python admits 3.10, and the runtime packages use nothing newer (vermin);
- the runtime's dependency set has Linux aarch64 cp310 wheels on PyPI (pip download;
  needs the network, skips without it);
- the emulated aarch64 round trip (scripts/aarch64_emulation.py; skips where qemu or the
  arm64 sysroot is not set up).

No 3.10 interpreter can be installed on this machine (Debian 12 ships 3.11): the 3.10
claim rests on vermin's static check plus the aarch64 run under Python 3.11.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

#: The runtime: what `ilc-run` with the onnxruntime/tensorrt backend imports (no torch).
RUNTIME_PATHS = [
    "ilc_export/contract", "ilc_export/codec", "ilc_export/backends", "ilc_export/pipeline", "ilc_export/scale",
    "ilc_export/cli/run_cli.py", "ilc_export/cli/common.py", "ilc_export/cli/scale.py", "ilc_export/cli/__init__.py",
]
JETSON_ENV = {"platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux",
              "python_version": "3.10", "python_full_version": "3.10.12", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "os_name": "posix"}


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_requirements(env: dict | None = None) -> list[str]:
    """The runtime's dependencies that apply on `env` (default: a JetPack 6 Jetson)."""
    from packaging.requirements import Requirement

    out = []
    for spec in _pyproject()["project"]["dependencies"]:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate(env or JETSON_ENV):
            req.marker = None
            out.append(str(req))
    return out


def test_requires_python_admits_310():
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert "3.10.12" in spec and "3.11.7" in spec and "3.9.18" not in spec


def test_constriction_is_not_required_on_aarch64():
    reqs = runtime_requirements()
    assert not [r for r in reqs if r.startswith("constriction")], reqs
    assert [r for r in runtime_requirements(dict(JETSON_ENV, platform_machine="x86_64")) if r.startswith("constriction")]


def test_runtime_uses_nothing_newer_than_python_310():
    pytest.importorskip("vermin", reason="vermin is not installed (pip install vermin; it is in the [dev] extra)")
    paths = [str(ROOT / p) for p in RUNTIME_PATHS]
    missing = [p for p in paths if not os.path.exists(p)]
    assert not missing, missing
    res = subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "-t=3.10-", "--no-tips", "--violations",
                          "--eval-annotations", "--no-parse-comments", *paths],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"the runtime needs a Python newer than 3.10:\n{res.stdout}\n{res.stderr}"


@pytest.mark.slow
def test_aarch64_cp310_wheels_of_the_runtime_exist(tmp_path):
    """`pip download --only-binary=:all: --platform manylinux2014_aarch64 --python-version 3.10`
    of the runtime's dependency set succeeds (manylinux_2_28 added: onnxruntime >= 1.17 and
    Pillow 12 tag their aarch64 wheels manylinux_2_28; JetPack 6 has glibc 2.35)."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
           "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
           "--python-version", "3.10", "--implementation", "cp", "--dest", str(tmp_path), *runtime_requirements()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    if res.returncode and any(s in out for s in ("NewConnectionError", "Max retries", "Temporary failure in name resolution",
                                                  "Network is unreachable", "ProxyError")):
        pytest.skip("PyPI is not reachable from here")
    assert res.returncode == 0, out[-3000:]
    wheels = [p.name for p in tmp_path.glob("*.whl")]
    for pkg in ("numpy", "onnxruntime", "pillow", "safetensors"):
        assert any(w.lower().startswith(pkg) and ("aarch64" in w) and ("cp310" in w or "abi3" in w) for w in wheels), (pkg, wheels)


def _emulation_ready() -> str | None:
    """None if the emulated aarch64 round trip can run here, else why not."""
    if os.environ.get("ILC_AARCH64_CHECK") != "1":
        return ("opt-in (about 4 min under qemu): set ILC_AARCH64_CHECK=1; result of the last run in "
                "docs/results/aarch64_emulation.json")
    if shutil.which("qemu-aarch64-static") is None and not Path("/usr/bin/qemu-aarch64-static").exists():
        return "qemu-user-static is not installed (apt-get install qemu-user-static)"
    root = Path(os.environ.get("ILC_AARCH64_ROOT", "/opt/ilc-aarch64"))
    if not (root / "sysroot" / "usr" / "bin").is_dir() or not (root / "site").is_dir():
        return (f"no aarch64 sysroot at {root} (set it up with scripts/aarch64_emulation.py setup, "
                "or point ILC_AARCH64_ROOT at one)")
    return None


@pytest.mark.slow
def test_emulated_aarch64_roundtrip(tmp_path):
    """x86 files decode under emulated aarch64 to the same pixels; aarch64 files decode on x86."""
    why = _emulation_ready()
    if why:
        pytest.skip(why)
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "aarch64_emulation.py"), "check",
                          "--work", str(tmp_path), "--size", "128x192", "--images", "1"],
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "SAME PIXELS" in res.stdout
