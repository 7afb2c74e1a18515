from pathlib import Path
from types import SimpleNamespace

import pytest

from converters.errors import UserError
from converters.precision import (FP32_ONNX_OPS, TOLERANCES, LayerFacts, fp32_onnx_nodes, plan_precision,
                                  select_fp32_layers)
from converters.tensorrt_backend import TensorRTInstall

TRT10, TRT11, RTX = TensorRTInstall("tensorrt", "10.8.0.43"), TensorRTInstall("tensorrt", "11.1.0.5"), \
    TensorRTInstall("tensorrt_rtx", "1.7.1.116")


def test_which_tensorrt_is_strongly_typed_and_serves_triton():
    assert not TRT10.strongly_typed and TRT11.strongly_typed and RTX.strongly_typed
    assert TRT10.serves_triton and TRT11.serves_triton and not RTX.serves_triton
    assert TensorRTInstall("tensorrt_bindings", "10.8.0.43").serves_triton
    assert RTX.label == "TensorRT for RTX 1.7.1.116" and TRT10.label == "TensorRT 10.8.0.43"


def test_who_can_run_an_engine():
    assert not TRT10.can_run_engines(None) and TRT10.can_run_engines("9.0")
    assert not RTX.can_run_engines("9.0")  # an H100 is not in TensorRT for RTX's support matrix
    assert RTX.can_run_engines("8.9") and RTX.can_run_engines("12.0") and not RTX.can_run_engines(None)


def test_fp16_on_tensorrt10_uses_builder_flags_and_pins_normalisation():
    plan = plan_precision(True, False, TRT10.strongly_typed)
    assert not plan.strongly_typed and not plan.fp16_onnx
    assert plan.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert "LayerNormalization" in plan.fp32_onnx_ops and "Softmax" in plan.fp32_onnx_ops


@pytest.mark.parametrize("install", [TRT11, RTX])
def test_fp16_strongly_typed_writes_precision_into_the_onnx(install):
    plan = plan_precision(True, False, install.strongly_typed)
    assert plan.strongly_typed and plan.fp16_onnx and plan.builder_flags == ()


def test_fp32_has_no_flags_and_tight_tolerance():
    plan = plan_precision(False, False, False)
    assert plan.builder_flags == () and plan.tolerance == TOLERANCES["fp32"]
    assert TOLERANCES["fp32"][0] < TOLERANCES["fp16"][0] < TOLERANCES["int8"][0]


def test_int8_without_calibration_is_refused():
    with pytest.raises(UserError, match="--calibration-data"):
        plan_precision(False, True, False)


def test_int8_with_calibration_data_on_tensorrt10():
    plan = plan_precision(False, True, False, calibration_data=Path("calib.npz"))
    assert plan.int8_source == "calibration-data" and "INT8" in plan.builder_flags


def test_int8_with_qdq_prefers_the_graph():
    plan = plan_precision(False, True, True, onnx_has_qdq=True)
    assert plan.int8_source == "qdq" and plan.strongly_typed and plan.builder_flags == ()


@pytest.mark.parametrize("install", [TRT11, RTX])
def test_int8_calibrator_when_strongly_typed_is_refused(install):
    with pytest.raises(UserError, match="Q/DQ"):
        plan_precision(False, True, install.strongly_typed, calibration_cache=Path("calib.cache"))


def _node(name, op_type):
    return SimpleNamespace(name=name, op_type=op_type)


def test_fp32_nodes_match_op_types_exactly_and_normalisation_scopes():
    nodes = [_node("/encoder/Expand", "Expand"), _node("/attn/Exp", "Exp"), _node("/attn/Softmax", "Softmax"),
             _node("/embeddings/LayerNorm/Sub", "Sub"), _node("/mlp/MatMul", "MatMul"), _node("/x/Expand_exp", "Expand")]
    kept = fp32_onnx_nodes(nodes, FP32_ONNX_OPS)
    assert kept == {"/attn/Exp", "/attn/Softmax", "/embeddings/LayerNorm/Sub"}
    assert fp32_onnx_nodes(nodes, ()) == frozenset()  # fp32 plans pin nothing


def test_layers_are_pinned_by_their_onnx_node_and_only_with_float_outputs():
    layers = [
        LayerFacts(0, "/encoder/Expand", "SLICE", "[ONNX Layer: /encoder/Expand]", ("INT64",)),
        LayerFacts(1, "/attn/Exp", "UNARY", "[ONNX Layer: /attn/Exp]", ("FLOAT",)),
        LayerFacts(2, "/attn/Softmax", "SOFTMAX", "[ONNX Layer: /attn/Softmax]", ("FLOAT",)),
        LayerFacts(3, "/ln/ReduceMean_shape", "SHAPE", "[ONNX Layer: /ln/ReduceMean]", ("INT64",)),
        LayerFacts(4, "/ln/ReduceMean", "REDUCE", "[ONNX Layer: /ln/ReduceMean]", ("FLOAT",)),
        LayerFacts(5, "ln.weight", "CONSTANT", "", ("FLOAT",)),
        LayerFacts(6, "/mlp/MatMul", "MATRIX_MULTIPLY", "[ONNX Layer: /mlp/MatMul]", ("FLOAT",)),
        LayerFacts(7, "/exp_named_but_not_exp", "ELEMENTWISE", "[ONNX Layer: /exp_named_but_not_exp]", ("FLOAT",)),
    ]
    nodes = frozenset({"/attn/Exp", "/ln/ReduceMean"})
    assert select_fp32_layers(layers, nodes) == (1, 2, 4)


def test_a_layer_without_parser_metadata_is_matched_by_its_exact_name():
    layers = [LayerFacts(0, "/attn/Exp", "UNARY", "", ("FLOAT",)), LayerFacts(1, "/attn/Exp_2", "UNARY", "", ("FLOAT",))]
    assert select_fp32_layers(layers, frozenset({"/attn/Exp"})) == (0,)


def test_the_absolute_tolerance_scales_with_the_outputs_range():
    """A box centre in pixels near 0 moved by 1.4 px in fp16 (YOLOX's decoded output, up to 1024)
    is within fp16's tolerance; the same move on a logit is not, and neither is a wrong box."""
    import numpy as np

    from converters.check import compare
    from converters.precision import TOLERANCES

    boxes = np.array([[0.5, 40.0, 1000.0, 12.0], [1000.0, 600.0, 20.0, 8.0]])  # cx, cy, w, h over a page
    assert compare({"output": boxes}, {"output": boxes + [1.4, 0, 0, 0]}, TOLERANCES["fp16"]).ok
    assert not compare({"output": boxes}, {"output": boxes + [60.0, 0, 0, 0]}, TOLERANCES["fp16"]).ok
    logits = np.array([[0.5, -0.2]])
    assert not compare({"output": logits}, {"output": logits + [1.4, 0]}, TOLERANCES["fp16"]).ok
    rows = np.array([[0.5, 40.0, 1000.0, 12.0, 0.9, 0.1], [600.0, 300.0, 20.0, 8.0, 0.2, 0.7]])  # boxes, then scores
    assert compare({"output": rows}, {"output": rows + [1.4, 0, 0, 0, 0, 0]}, TOLERANCES["fp16"]).ok
    assert not compare({"output": rows}, {"output": rows + [0, 0, 0, 0, 0.5, 0]}, TOLERANCES["fp16"]).ok  # a score


def test_the_fp32_reference_leaves_the_process_matmul_setting_as_it_found_it():
    """run_torch computes in IEEE fp32 and restores the setting exactly, also after an error: the old
    `allow_tf32` flag restored "none" as "ieee", a change in Inductor's cache key that made every
    server load miss the builder's published cache. TF32 set through the old flag stays readable."""
    import numpy as np
    import torch

    from converters.export import ieee_fp32_matmuls, run_torch
    from converters.io_config import parse_io_config

    matmul = torch.backends.cuda.matmul
    io = parse_io_config('{"inputs": [{"name": "x", "dtype": "float32", "shape": [4]}], '
                         '"outputs": [{"name": "y", "dtype": "float32", "shape": [4]}]}')
    original = matmul.fp32_precision
    try:
        matmul.fp32_precision = "none"
        with ieee_fp32_matmuls():
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "none"
        with pytest.raises(RuntimeError), ieee_fp32_matmuls():
            raise RuntimeError("a failing reference")
        assert matmul.fp32_precision == "none"
        assert run_torch(torch.nn.Identity(), io, {"x": np.ones((2, 4), np.float32)})["y"].shape == (2, 4)
        assert matmul.fp32_precision == "none"

        matmul.allow_tf32 = True  # a user's script may set TF32 the old way
        with ieee_fp32_matmuls():
            assert matmul.allow_tf32 is False
        assert matmul.allow_tf32 is True and matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = original
