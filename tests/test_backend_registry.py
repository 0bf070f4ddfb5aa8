"""The backend registry: what each backend declares, read without importing its runtime."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from ilc_export.backends import BackendError, registry
from ilc_export.backends.base import CHECKPOINT, ENGINES, ONNX_EXPORT


def test_names_aliases_and_sources():
    assert registry.names() == ("torch", "onnxruntime", "tensorrt")  # automatic selection's preference
    assert {a: registry.canonical(a) for a in ("ort", "TRT", "pytorch", "torch")} == {
        "ort": "onnxruntime", "TRT": "tensorrt", "pytorch": "torch", "torch": "torch"}
    assert registry.canonical("tensorflow") is None
    with pytest.raises(BackendError, match="unknown backend 'tensorflow'; choose one of torch, onnxruntime, tensorrt"):
        registry.get("tensorflow")
    assert [registry.for_source(k).name for k in (CHECKPOINT, ONNX_EXPORT, ENGINES)] == ["torch", "onnxruntime", "tensorrt"]


def test_reading_specs_imports_no_backend_runtime():
    code = ("import sys; from ilc_export.backends import registry; "
            "specs = registry.specs(); [s.available() for s in specs.values()]; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'tensorrt_rtx', 'ilc_reference') if m in sys.modules]; "
            "loaded = [m for m in sys.modules if m.endswith(('.loader', '.runner'))]; "
            "assert not heavy and not loaded, (heavy, loaded)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_runners_declare_what_their_spec_declares():
    from ilc_export.backends.onnxrt.runner import OrtRunner
    from ilc_export.backends.pytorch.runner import TorchRunner
    from ilc_export.backends.tensorrt.runner import TrtRunner

    for cls in (TorchRunner, OrtRunner, TrtRunner):
        spec = registry.get(cls.name)
        assert cls.capabilities == spec.capabilities, cls
        assert spec.loader.startswith(cls.__module__.rpartition(".")[0] + ".loader:")
