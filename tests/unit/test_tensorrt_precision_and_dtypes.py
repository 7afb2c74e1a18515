"""converters/tensorrt_backend.py against the TensorRT installed here (TensorRT for RTX: its builder
runs on the CPU): fp32 builds clear TF32, which TensorRT sets by default, and bf16/fp8 IO tensors
get a dtype name (numpy has none) where `trt.nptype` raises; the 4-bit types are refused by name.
Running an engine needs a GPU: `_host_tensor`, what `run_engine` feeds it, is checked on the CPU."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from converters import tensorrt_backend
from converters.errors import UserError
from converters.precision import plan_precision

FP32 = plan_precision(False, False, True)
FP16 = plan_precision(True, False, True)


@pytest.fixture(scope="module")
def trt():
    if tensorrt_backend.installed_tensorrt() is None:
        pytest.skip("no TensorRT here (`pip install -e .[test]` installs TensorRT for RTX)")
    return tensorrt_backend._trt()


def _config(trt):
    builder = trt.Builder(tensorrt_backend._logger(trt))
    return builder, builder.create_builder_config()


def test_fp32_clears_tf32_which_tensorrt_sets_by_default(trt):
    if not hasattr(trt.BuilderFlag, "TF32"):
        pytest.skip(f"{tensorrt_backend.installed_tensorrt().label} has no TF32 flag")
    _builder, config = _config(trt)
    assert config.get_flag(trt.BuilderFlag.TF32)  # TensorRT's default: why fp32 must clear it
    tensorrt_backend._set_precision(trt, config, FP32)
    assert not config.get_flag(trt.BuilderFlag.TF32)
    _builder, config = _config(trt)
    tensorrt_backend._set_precision(trt, config, FP16)  # reduced precision: TF32 is no lie there
    assert config.get_flag(trt.BuilderFlag.TF32)


def test_a_tensorrt_without_the_tf32_flag_sets_the_plans_flags_only():
    calls = []
    config = SimpleNamespace(set_flag=lambda flag: calls.append(("set", flag)),
                             clear_flag=lambda flag: calls.append(("clear", flag)))
    fake = SimpleNamespace(BuilderFlag=SimpleNamespace(FP16="FP16"))
    tensorrt_backend._set_precision(fake, config, FP32)
    assert calls == []
    tensorrt_backend._set_precision(fake, config, dataclasses.replace(FP16, builder_flags=("FP16",)))
    assert calls == [("set", "FP16")]
    fake.BuilderFlag.TF32 = "TF32"
    tensorrt_backend._set_precision(fake, config, FP32)
    assert calls[-1] == ("clear", "TF32")


def _onnx(path: Path, io_type: int, compute_type: int) -> Path:
    """x -> Cast -> MatMul (identity weights) -> Cast -> y, IO in `io_type`."""
    import onnx
    from onnx import helper

    weights = helper.make_tensor("w", compute_type, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    nodes = [helper.make_node("Cast", ["x"], ["xc"], to=compute_type), helper.make_node("MatMul", ["xc", "w"], ["yc"]),
             helper.make_node("Cast", ["yc"], ["y"], to=io_type)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", io_type, [-1, 4])],
                              [helper.make_tensor_value_info("y", io_type, [-1, 4])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _request(onnx_path: Path, plan, tmp_path: Path) -> tensorrt_backend.EngineRequest:
    return tensorrt_backend.EngineRequest(
        model_name="tiny", onnx_path=onnx_path, profiles={"x": ((1, 4), (2, 4), (4, 4))}, plan=plan,
        memory_pool_limit=1 << 28, timing_cache_path=tmp_path / "timing.cache",
        compute_capability="8.9" if tensorrt_backend.installed_tensorrt().rtx else None)


def test_an_fp32_build_reaches_the_builder_without_tf32(trt, tmp_path, monkeypatch):
    from onnx import TensorProto

    if not hasattr(trt.BuilderFlag, "TF32"):
        pytest.skip("this TensorRT has no TF32 flag")
    seen = {}
    build = trt.Builder.build_serialized_network

    def recording(self, network, config):
        seen["tf32"] = config.get_flag(trt.BuilderFlag.TF32)
        return build(self, network, config)

    monkeypatch.setattr(trt.Builder, "build_serialized_network", recording)
    onnx_path = _onnx(tmp_path / "fp32.onnx", TensorProto.FLOAT, TensorProto.FLOAT)
    plan = plan_precision(False, False, tensorrt_backend.installed_tensorrt().strongly_typed)
    built = tensorrt_backend.build_engine(_request(onnx_path, plan, tmp_path))
    assert built.precision == "fp32" and seen == {"tf32": False}


def test_bf16_io_tensors_are_built_and_named(trt, tmp_path):
    """Before: `trt.nptype(BF16)` raised, and the build failed "to configure the build"."""
    from onnx import TensorProto

    if not tensorrt_backend.installed_tensorrt().strongly_typed:
        pytest.skip("this TensorRT is weakly typed (TensorRT 10): bf16 IO is checked with a strongly typed one, TensorRT for RTX in CI")
    onnx_path = _onnx(tmp_path / "bf16.onnx", TensorProto.BFLOAT16, TensorProto.FLOAT)
    built = tensorrt_backend.build_engine(_request(onnx_path, FP32, tmp_path))
    assert {i.name: i.dtype for i in built.inputs} == {"x": "bfloat16"} and built.outputs == {"y": "bfloat16"}
    assert built.manifest_entry()["inputs"]["x"]["dtype"] == "bfloat16"


def test_every_tensorrt_dtype_is_named_for_torch_or_refused_in_one_sentence(trt):
    named = {}
    for dtype in trt.DataType.__members__.values():
        try:
            named[dtype.name] = tensorrt_backend._dtype_name(trt, dtype, "pixel_values", "yolox")
        except UserError as refused:
            message = str(refused)
            assert message == (f"the tensor 'pixel_values' of model 'yolox' has the TensorRT dtype {dtype.name}, "
                               "which no host array holds; give the graph's inputs and outputs another dtype.")
    assert named["BF16"] == "bfloat16" and named["FP8"] == "float8_e4m3fn"
    assert "FP8 : \n    Signed 8-bit floating point with 1 sign bit, 4 exponent bits, 3 mantissa" in trt.DataType.__doc__
    assert named["FLOAT"] == "float32" and named["HALF"] == "float16" and named["BOOL"] == "bool"
    assert all(isinstance(getattr(torch, name), torch.dtype) for name in named.values())  # run_engine's buffers
    assert {"INT4", "FP4"} <= set(trt.DataType.__members__) - set(named)


@pytest.mark.parametrize("name,feed", [
    ("bfloat16", np.array([[1.0, 0.5, -2.0, 3.0]], np.float32)),
    ("float8_e4m3fn", np.array([[1.0, 0.5, -2.0, 3.0]], np.float32)),
    ("float16", np.array([[1.0, 0.5, -2.0, 3.0]], np.float32)),
    ("int64", np.array([[1, 2, 3]], np.int32)),
    ("bool", np.array([[1, 0]], np.int64)),
])
def test_run_engine_feeds_are_cast_to_the_engines_dtype(name, feed):
    tensor = tensorrt_backend._host_tensor(feed, name)
    assert tensor.dtype == getattr(torch, name) and tuple(tensor.shape) == feed.shape
    np.testing.assert_array_equal(tensor.float().numpy(), feed.astype(np.float32))
