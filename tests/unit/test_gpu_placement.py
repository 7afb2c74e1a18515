"""Instances on the GPUs the settings name: the config's groups and parameters, and which GPU each
python-backend instance then drives."""
from __future__ import annotations

from pathlib import Path

import pytest

from converters.batching import BatchPlan
from converters.conversion_settings import ConversionSettings
from converters.io_config import parse_io_config
from converters.pipeline import placement
from converters.runners.model_support import instance_device
from converters.serve_backends import serve_backend
from converters.triton_config import InstancePlan
from tests.helpers import SEED_IO_CONFIG


def _settings(device: str, gpus: tuple[int, ...], count: int = 2) -> ConversionSettings:
    return ConversionSettings(
        ckpt_path=Path("m.pt"), model_script_path=Path("m.py"), model_class_name="M", model_name="m",
        io=parse_io_config(SEED_IO_CONFIG), plan=BatchPlan.create(8, (None, 128), None), onnx_path=Path("m.onnx"),
        engine_path=Path("m.plan"), triton_repo=Path("repo"), triton_inputs=None, device=device,
        generate_triton_config=True, instances=InstancePlan(count, "auto", gpus))


def test_torchscript_instances_take_count_per_gpu_and_the_devices_parameter():
    instances, parameters = placement(_settings("cuda", (0, 1)), serve_backend("python_torch"), "fp16")
    assert instances == InstancePlan(4, "KIND_CPU", ())
    assert parameters == {"precision": "fp16", "device": "cuda", "devices": "cuda:0,cuda:1"}


def test_engines_are_gpu_instances_on_the_named_gpus_or_every_visible_one():
    named, _ = placement(_settings("cuda", (0, 1)), serve_backend("tensorrt_plan"), "fp16")
    assert named == InstancePlan(2, "KIND_GPU", (0, 1))
    every, parameters = placement(_settings("cuda", ()), serve_backend("tensorrt_plan"), "fp16")
    assert every == InstancePlan(2, "KIND_GPU", ()) and parameters == {}


def test_cpu_models_ignore_gpu_ids():
    instances, parameters = placement(_settings("cpu", (0, 1)), serve_backend("python_torch"), "fp32")
    assert instances == InstancePlan(2, "KIND_CPU", ()) and "devices" not in parameters


@pytest.mark.parametrize("name, expected", [("e5_small_v2_0_0", "cuda:0"), ("e5_small_v2_0_1", "cuda:1"),
                                            ("e5_small_v2_0_2", "cuda:0"), ("e5_small_v2_0_3", "cuda:1")])
def test_each_instance_drives_the_gpus_in_turn(name, expected):
    assert instance_device({"device": "cuda", "devices": "cuda:0,cuda:1"}, name) == expected


def test_without_devices_the_device_parameter_is_used():
    assert instance_device({"device": "cuda"}, "m_0_3") == "cuda"
    assert instance_device({}, "m_0_0") == "cpu"
