from pathlib import Path

import pytest

from converters.errors import UserError
from converters.precision import TOLERANCES, plan_precision


def test_fp16_on_tensorrt10_uses_builder_flags_and_pins_normalisation():
    plan = plan_precision(True, False, 10)
    assert not plan.strongly_typed and not plan.fp16_onnx
    assert plan.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert "LayerNormalization" in plan.fp32_layer_types and "Softmax" in plan.fp32_layer_types


def test_fp16_on_tensorrt11_writes_precision_into_the_onnx():
    plan = plan_precision(True, False, 11)
    assert plan.strongly_typed and plan.fp16_onnx and plan.builder_flags == ()


def test_without_tensorrt_the_plan_targets_tensorrt10():
    assert plan_precision(True, False, None).builder_flags[0] == "FP16"


def test_fp32_has_no_flags_and_tight_tolerance():
    plan = plan_precision(False, False, 10)
    assert plan.builder_flags == () and plan.tolerance == TOLERANCES["fp32"]
    assert TOLERANCES["fp32"][0] < TOLERANCES["fp16"][0] < TOLERANCES["int8"][0]


def test_int8_without_calibration_is_refused():
    with pytest.raises(UserError, match="--calibration-data"):
        plan_precision(False, True, 10)


def test_int8_with_calibration_data_on_tensorrt10():
    plan = plan_precision(False, True, 10, calibration_data=Path("calib.npz"))
    assert plan.int8_source == "calibration-data" and "INT8" in plan.builder_flags


def test_int8_with_qdq_prefers_the_graph():
    plan = plan_precision(False, True, 11, onnx_has_qdq=True)
    assert plan.int8_source == "qdq" and plan.strongly_typed and plan.builder_flags == ()


def test_int8_calibrator_on_tensorrt11_is_refused():
    with pytest.raises(UserError, match="Q/DQ"):
        plan_precision(False, True, 11, calibration_cache=Path("calib.cache"))
