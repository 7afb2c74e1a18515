"""Precision is a policy, not a flag.

- fp16 keeps normalisation and softmax in fp32: BERT-class LayerNorm overflows in fp16. Which
  ONNX nodes stay in fp32 is decided once (`fp32_onnx_nodes`) and used both ways:
- TensorRT 10 is weakly typed: builder flags plus per-layer precision constraints on the layers
  that come from those nodes (`select_fp32_layers`).
- TensorRT 11 and TensorRT for RTX are strongly typed: `BuilderFlag.FP16/INT8` are gone, so the
  reduced precision is written into the ONNX graph (fp16 casts with those nodes in fp32; Q/DQ
  for int8).
- INT8 needs calibration data, a calibration cache or Q/DQ nodes; without any it is refused.
- The check tolerance scales with the precision of the graph being compared.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from converters.errors import UserError

# ONNX op types kept in fp32 under fp16 (they overflow or lose too much in half precision).
FP32_ONNX_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf", "Exp", "Log",
                 "ReduceSum", "GroupNormalization", "InstanceNormalization")

# Nodes of decomposed normalisation (e.g. DeBERTa's own LayerNorm: ReduceMean/Sub/Pow/Sqrt/Div
# under a ".../LayerNorm/..." scope) are kept in fp32 by scope as well as by op type.
_NORMALISATION_SCOPE = re.compile(r"layernorm|groupnorm|(^|[/._])norm([/._]|$)", re.IGNORECASE)

# TensorRT layer types kept in fp32 whatever ONNX node they came from.
FP32_LAYER_TYPES = ("SOFTMAX", "NORMALIZATION")
_FLOAT_TYPES = ("FLOAT", "HALF", "BF16")
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]*)\]")

# (absolute, relative) tolerance of ONNX Runtime / engine output vs PyTorch fp32, per precision.
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "int8": (1e-1, 1e-1), "fp8": (1e-1, 1e-1)}


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str  # fp32 | fp16 | int8
    strongly_typed: bool  # TensorRT >= 11 or TensorRT for RTX: precision lives in the ONNX graph
    fp16_onnx: bool  # convert the ONNX to fp16 (kept ops in fp32) before the build
    builder_flags: tuple[str, ...]  # names of trt.BuilderFlag members to set
    fp32_onnx_ops: tuple[str, ...]  # ONNX op types whose nodes stay in fp32
    int8_source: str | None  # "calibration-data" | "calibration-cache" | "qdq" | None

    @property
    def tolerance(self) -> tuple[float, float]:
        return TOLERANCES[self.precision]


def plan_precision(use_fp16: bool, use_int8: bool, strongly_typed: bool, *,
                   calibration_data: Path | None = None, calibration_cache: Path | None = None,
                   onnx_has_qdq: bool = False) -> PrecisionPlan:
    """Decide how to reach the requested precision with the TensorRT that will build.

    `strongly_typed` is False where TensorRT is not installed: the plan then targets TensorRT
    10's weak typing (the version of the 24.x-25.x NGC images) and only the ONNX side runs.
    """
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
                "--use-int8 with a strongly typed TensorRT (11, or TensorRT for RTX) needs Q/DQ nodes in the ONNX "
                "(strongly typed networks ignore calibrators); quantize the ONNX first (e.g. with ModelOpt) or build "
                "with TensorRT 10."
            )
        flags = () if strongly_typed else ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS")
        return PrecisionPlan("int8", strongly_typed, False, flags, FP32_ONNX_OPS, source)
    if use_fp16:
        if strongly_typed:
            return PrecisionPlan("fp16", True, True, (), FP32_ONNX_OPS, None)
        return PrecisionPlan("fp16", False, False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), FP32_ONNX_OPS, None)
    return PrecisionPlan("fp32", strongly_typed, False, (), (), None)


def fp32_onnx_nodes(nodes, keep_ops: tuple[str, ...]) -> frozenset[str]:
    """Names of the ONNX nodes (`graph.node`) that stay in fp32: an op type in `keep_ops`
    (exactly), or a node inside a normalisation scope."""
    keep = set(keep_ops)
    return frozenset(node.name for node in nodes
                     if node.op_type in keep or (keep and _NORMALISATION_SCOPE.search(node.name)))


@dataclass(frozen=True)
class LayerFacts:
    """What the precision policy needs to know of one TensorRT layer (read at the seam)."""
    index: int
    name: str
    type: str  # LayerType member name: "SOFTMAX", "SLICE", ...
    metadata: str  # the ONNX parser's "[ONNX Layer: <node name>]"
    output_dtypes: tuple[str, ...]  # DataType member names: "FLOAT", "INT64", ...

    @property
    def onnx_nodes(self) -> tuple[str, ...]:
        found = tuple(_ONNX_LAYER.findall(self.metadata or ""))
        return found or (self.name,)


def select_fp32_layers(layers: list[LayerFacts], fp32_nodes: frozenset[str]) -> tuple[int, ...]:
    """Weak typing (TensorRT 10): the layers to pin to fp32. A layer is pinned when it comes from
    an fp32 ONNX node (by the parser's metadata, exactly; never by a substring of its name) or
    is a softmax/normalisation layer, and only when every output is floating point: an INT64
    shape layer pinned to fp32 fails the build under OBEY_PRECISION_CONSTRAINTS."""
    chosen = []
    for layer in layers:
        if layer.type == "CONSTANT" or not layer.output_dtypes:
            continue
        if not all(dtype in _FLOAT_TYPES for dtype in layer.output_dtypes):
            continue
        if layer.type in FP32_LAYER_TYPES or any(node in fp32_nodes for node in layer.onnx_nodes):
            chosen.append(layer.index)
    return tuple(chosen)
