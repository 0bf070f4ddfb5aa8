"""How each TensorRT flavour does the things the engine builder needs.

Three flavours share one API shape (``Builder``, ``OnnxParser``, ``IBuilderConfig``...):

=================  ===========  ==========================================================
flavour            typing       fp16
=================  ===========  ==========================================================
tensorrt 10        weak         fp32 ONNX + ``BuilderFlag.FP16`` + per-layer fp32
(JetPack 6)                     constraints (``layer.precision``, ``set_output_type``,
                                ``OBEY_PRECISION_CONSTRAINTS``) on the sensitive layers
tensorrt 11        strong only  the fp16 ONNX graph (fp32 islands inside it), built as is
(JetPack 7)
tensorrt_rtx       strong only  as tensorrt 11; builds on a CPU-only machine for explicit
(RTX PCs, CI)                   target compute capabilities (``ComputeCapability.SM86``...)
=================  ===========  ==========================================================

Which flavour is installed is a runtime fact (:mod:`ilc_export.backends.tensorrt.flavour`);
:class:`BuildFlavour` adds the builder's pieces to it.
"""
from __future__ import annotations

from ..backends.tensorrt import flavour as _runtime
from ..backends.tensorrt.flavour import Flavour, FlavourError, normalise_cc


class BuildFlavour(Flavour):
    """One installed TensorRT, with what building engines needs of it."""

    @property
    def supports_target_cc(self) -> bool:
        """Can the builder target compute capabilities other than the local GPU's (CPU-only AOT)?"""
        return hasattr(self.trt, "ComputeCapability") and hasattr(self.trt.IBuilderConfig, "set_compute_capability")

    @property
    def supports_timing_cache(self) -> bool:
        # TensorRT-RTX >= 1.2: timing cache calls are accepted but are no-ops (deprecated).
        return not self.is_rtx and hasattr(self.trt.IBuilderConfig, "create_timing_cache")

    # ---------------------------------------------------------------- builder pieces
    def create_network(self, builder, strongly_typed: bool):
        """A network; strongly typed where asked (TensorRT 11 and RTX networks always are)."""
        flags = 0
        nf = self.trt.NetworkDefinitionCreationFlag
        eb = getattr(nf, "EXPLICIT_BATCH", None)
        if eb is not None and self.major < 10:  # TensorRT 8.x (JetPack 5 / 6.0): ONNX needs explicit batch
            flags |= 1 << int(eb)
        st = getattr(nf, "STRONGLY_TYPED", None)
        if strongly_typed and st is not None and not self.strongly_typed_only:
            flags |= 1 << int(st)  # TensorRT 10 building an fp16 ONNX as is
        return builder.create_network(flags)

    def cc_enum(self, cc: str):
        cc = normalise_cc(cc)
        members = getattr(self.trt.ComputeCapability, "__members__", {})
        if cc not in members:
            ok = ", ".join(k for k in members if k.startswith("SM"))
            raise FlavourError(f"{self.name} {self.version} cannot target {cc}; it knows {ok}")
        return members[cc]

    def set_target_ccs(self, config, ccs: tuple[str, ...]) -> list[str]:
        """Target these compute capabilities (CPU-only AOT); returns the normalised names."""
        names = [normalise_cc(c) for c in ccs]
        if not self.supports_target_cc:
            raise FlavourError(
                f"{self.describe()} builds for the GPU it runs on; it cannot target {', '.join(names)}. "
                "Build on the target device (e.g. the Jetson) or install tensorrt-rtx for CPU-only AOT builds."
            )
        enums = [self.cc_enum(c) for c in names]
        config.num_compute_capabilities = len(enums)
        for i, e in enumerate(enums):
            if not config.set_compute_capability(e, i):
                raise FlavourError(f"{self.name} refused target compute capability {names[i]}")
        return names

    def enable_weak_fp16(self, config) -> None:
        trt = self.trt
        config.set_flag(trt.BuilderFlag.FP16)
        # make the per-layer fp32 constraints binding (not just hints)
        flag = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None) or trt.BuilderFlag.STRICT_TYPES
        config.set_flag(flag)

    # ------------------------------------------------------------------ layer access
    def downcast(self, layer):
        """The typed view of a layer (IUnaryLayer, IActivationLayer, ...), to read its op."""
        trt = self.trt
        cls = {
            trt.LayerType.UNARY: getattr(trt, "IUnaryLayer", None),
            trt.LayerType.ACTIVATION: getattr(trt, "IActivationLayer", None),
            trt.LayerType.ELEMENTWISE: getattr(trt, "IElementWiseLayer", None),
        }.get(layer.type)
        if cls is not None:
            layer.__class__ = cls
        return layer

    def layer_op(self, layer) -> str:
        """'Exp', 'Sigmoid', ... for the layers the precision policy cares about, else the layer type."""
        trt = self.trt
        lt = layer.type
        try:
            if lt == trt.LayerType.UNARY:
                op = self.downcast(layer).op
                return {trt.UnaryOperation.EXP: "Exp"}.get(op, f"Unary.{op.name}")
            if lt == trt.LayerType.ACTIVATION:
                act = self.downcast(layer).type  # IActivationLayer.type is the activation
                return {trt.ActivationType.SIGMOID: "Sigmoid"}.get(act, f"Activation.{act.name}")
        finally:
            layer.__class__ = trt.ILayer  # pybind may hand the same wrapper out again: restore it
        return lt.name.title()

    def dtype_name(self, dt) -> str:
        trt = self.trt
        return {
            trt.float32: "fp32",
            trt.float16: "fp16",
            getattr(trt, "bfloat16", object()): "bf16",
            trt.int32: "int32",
            trt.int64: "int64",
            trt.int8: "int8",
            trt.bool: "bool",
        }.get(dt, str(dt).split(".")[-1].lower())


def detect(prefer: str | None = None) -> BuildFlavour:
    """The installed TensorRT flavour (see :func:`ilc_export.backends.tensorrt.flavour.detect`)."""
    return _runtime.detect(prefer, cls=BuildFlavour)
