import pytest
from tritonclient.grpc import model_config_pb2 as pb

from converters.batching import BatchPlan
from converters.errors import UserError
from converters.io_config import parse_io_config
from converters.triton_config import (InstancePlan, TritonModelConfig, build_config, check_config_fits_profile,
                                      config_text, parse_config)
from tests.helpers import SEED_IO_CONFIG


def _config(backend="tensorrt_plan", **overrides):
    io = parse_io_config(SEED_IO_CONFIG)
    plan = BatchPlan.create(overrides.pop("max_batch", 16), (8, 128), overrides.pop("preferred", None))
    fields = dict(name="deberta_large", serve_backend=backend, io=io, triton_inputs=("input_ids", "input_mask"),
                  plan=plan, dynamic_batching=True, max_queue_delay_us=100)
    fields.update(overrides)
    return build_config(TritonModelConfig(**fields)), plan, io


def test_tensorrt_config_round_trips_through_tritons_schema():
    config, plan, io = _config(instances=InstancePlan(2, "KIND_GPU", (0, 1)), warmup=True)
    parsed = parse_config(config_text(config))
    assert parsed.platform == "tensorrt_plan" and parsed.name == "deberta_large"
    assert parsed.max_batch_size == 16
    assert [i.name for i in parsed.input] == ["input_ids", "input_mask"]
    assert parsed.input[0].data_type == pb.TYPE_INT64 and list(parsed.input[0].dims) == [128]
    assert list(parsed.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8, 16]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 100
    assert parsed.instance_group[0].count == 2 and list(parsed.instance_group[0].gpus) == [0, 1]
    assert parsed.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert parsed.model_warmup[0].batch_size == 8 and list(parsed.model_warmup[0].inputs["input_ids"].dims) == [128]
    check_config_fits_profile(parsed, plan.profiles(io))


def test_python_runner_and_onnxruntime_configs():
    python, _, _ = _config("python_onnx", instances=InstancePlan(1, "KIND_CPU"))
    assert python.backend == "python" and not python.platform
    assert python.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    onnx, _, _ = _config("onnxruntime_onnx")
    assert onnx.platform == "onnxruntime_onnx"


def test_no_dynamic_batching_section_without_the_flag():
    config, _, _ = _config(dynamic_batching=False)
    assert not config.HasField("dynamic_batching")


def test_config_that_exceeds_the_engine_profile_is_refused():
    config, _, io = _config(max_batch=16)
    smaller = BatchPlan.create(8, (8, 128), None)
    with pytest.raises(UserError, match="exceeds the engine profile"):
        check_config_fits_profile(config, smaller.profiles(io))


def test_invalid_instance_settings():
    with pytest.raises(UserError, match="--instance-count"):
        InstancePlan(0)
    with pytest.raises(UserError, match="--instance-gpus"):
        InstancePlan(1, "KIND_CPU", (0,))


def test_invalid_config_text_names_the_file():
    with pytest.raises(UserError, match="models/x/config.pbtxt"):
        parse_config("name: 'x' max_batch_size: banana", "models/x/config.pbtxt")
