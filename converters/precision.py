"""Precision is a policy, not a flag.

- fp16 keeps normalisation and softmax in fp32: BERT-class LayerNorm overflows in fp16.
- TensorRT 10 is weakly typed: builder flags plus per-layer precision constraints.
- TensorRT 11 is strongly typed: `BuilderFlag.FP16/INT8` are gone, so the reduced precision
  must be written into the ONNX graph (fp16 casts with the kept ops in fp32; Q/DQ for int8).
- INT8 needs calibration data, a calibration cache or Q/DQ nodes; without any it is refused.
- The check tolerance scales with the precision of the graph being compared.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.errors import UserError

# ONNX op types kept in fp32 under fp16 (they overflow or lose too much in half precision).
FP32_ONNX_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf", "Exp", "Log",
                 "ReduceSum", "GroupNormalization", "InstanceNormalization")

# (absolute, relative) tolerance of ONNX Runtime / engine output vs PyTorch fp32, per precision.
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "int8": (1e-1, 1e-1)}


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str  # fp32 | fp16 | int8
    strongly_typed: bool  # TensorRT >= 11: precision lives in the ONNX graph
    fp16_onnx: bool  # convert the ONNX to fp16 (kept ops in fp32) before the build
    builder_flags: tuple[str, ...]  # names of trt.BuilderFlag members to set
    fp32_layer_types: tuple[str, ...]  # ONNX op types whose TensorRT layers are pinned to fp32
    int8_source: str | None  # "calibration-data" | "calibration-cache" | "qdq" | None

    @property
    def tolerance(self) -> tuple[float, float]:
        return TOLERANCES[self.precision]


def plan_precision(use_fp16: bool, use_int8: bool, trt_major: int | None, *,
                   calibration_data: Path | None = None, calibration_cache: Path | None = None,
                   onnx_has_qdq: bool = False) -> PrecisionPlan:
    """Decide how to reach the requested precision with the TensorRT that will build.

    `trt_major` is None where TensorRT is not installed: the plan then targets TensorRT 10's
    weak typing (the version of the 24.x-25.x NGC images) and only the ONNX side runs.
    """
    strongly_typed = trt_major is not None and trt_major >= 11
    if use_int8:
        sources = [name for name, present in (("calibration-data", calibration_data),
                                              ("calibration-cache", calibration_cache),
                                              ("qdq", onnx_has_qdq)) if present]
        if not sources:
            raise UserError(
                "--use-int8 needs calibration: pass --calibration-data FILE.npz (sample batches) or "
                "--calibration-cache FILE, or export a graph with Q/DQ nodes."
            )
        source = "qdq" if onnx_has_qdq else sources[0]
        if strongly_typed and source != "qdq":
            raise UserError(
                f"--use-int8 with TensorRT {trt_major} needs Q/DQ nodes in the ONNX (strongly typed "
                "networks ignore calibrators); quantize the ONNX first (e.g. with ModelOpt) or build with TensorRT 10."
            )
        flags = () if strongly_typed else ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS")
        return PrecisionPlan("int8", strongly_typed, False, flags, FP32_ONNX_OPS, source)
    if use_fp16:
        if strongly_typed:
            return PrecisionPlan("fp16", True, True, (), FP32_ONNX_OPS, None)
        return PrecisionPlan("fp16", False, False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), FP32_ONNX_OPS, None)
    return PrecisionPlan("fp32", strongly_typed, False, (), (), None)
