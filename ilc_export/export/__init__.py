"""Tooling: making deployable models from a trained checkpoint.

ONNX export (``onnx_export``, ``fp16``), TensorRT engine builds (``trt_build``,
``trt_flavours``), the codec's integer tables (``tables_build``, derived once from the
float model), and ``prepare`` (a checkpoint copy with tables and an export, for benchmarks).

May import: anything below it (contract, codec, backends, pipeline, scale), the reference
package (``ilc_reference``) and torch, onnx, TensorRT. Never ``ilc_export.verify`` (its peer)
or the CLIs. Nothing in the runtime imports this package.
"""
