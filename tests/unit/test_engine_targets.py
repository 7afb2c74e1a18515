"""One engine per GPU type: which engines a build makes, their files, the config's map and the
manifest gate (`converters.engine_targets`, `converters.manifest.engine_compatibility`)."""
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from converters.engine_targets import VisibleGpu, cc_model_filenames, engine_targets, parse_gpu_types
from converters.errors import UserError
from converters.manifest import engine_compatibility, fingerprint
from converters.model_folder import Manifest

H100S_AND_A100 = [VisibleGpu(0, "NVIDIA H100 80GB HBM3", "9.0"), VisibleGpu(1, "NVIDIA A100-SXM4-80GB", "8.0"),
                  VisibleGpu(2, "NVIDIA H100 80GB HBM3", "9.0")]
ENGINE = Path("/work/e5/model.plan")


def test_one_engine_per_visible_gpu_type_built_on_the_first_gpu_of_that_type():
    targets = engine_targets((), H100S_AND_A100, rtx=False, engine_path=ENGINE)
    assert [(t.compute_capability, t.device) for t in targets] == [("9.0", 0), ("8.0", 1)]
    assert [t.engine_path for t in targets] == [ENGINE, Path("/work/e5/model.sm80.plan")]
    assert [t.model_file for t in targets] == ["model.plan", "model.sm80.plan"]
    assert cc_model_filenames(targets) == {"9.0": "model.plan", "8.0": "model.sm80.plan"}


def test_one_gpu_type_keeps_one_engine_and_no_map():
    targets = engine_targets((), H100S_AND_A100[:1], rtx=False, engine_path=ENGINE)
    assert [(t.compute_capability, t.engine_path, t.model_file) for t in targets] == [("9.0", ENGINE, "model.plan")]
    assert cc_model_filenames(targets) == {}


def test_without_a_gpu_one_engine_for_the_builders_default():
    (target,) = engine_targets((), [], rtx=True, engine_path=ENGINE)
    assert target.compute_capability is None and target.device is None and target.engine_path == ENGINE


def test_tensorrt_for_rtx_builds_named_types_without_a_gpu():
    targets = engine_targets(("8.6", "8.9"), [], rtx=True, engine_path=ENGINE)
    assert [(t.compute_capability, t.device) for t in targets] == [("8.6", None), ("8.9", None)]


def test_a_type_no_builder_can_build_for_is_refused_in_one_sentence():
    with pytest.raises(UserError, match=r"--gpu-types names 8\.0, but TensorRT builds an engine for the GPU it runs on "
                                        r"and no visible GPU has compute capability 8\.0 \(visible: 0 NVIDIA H100"):
        engine_targets(("9.0", "8.0"), H100S_AND_A100[:1], rtx=False, engine_path=ENGINE)
    with pytest.raises(UserError, match="--gpu-types names 9.0, which TensorRT for RTX cannot build for"):
        engine_targets(("9.0",), [], rtx=True, engine_path=ENGINE)


def test_gpu_types_are_parsed_and_checked():
    assert parse_gpu_types("9.0, 8.0,9.0") == ("9.0", "8.0")
    assert parse_gpu_types(None) == ()
    with pytest.raises(UserError, match="--gpu-types must be compute capabilities such as 8.0,9.0"):
        parse_gpu_types("sm90")


def test_the_config_maps_each_gpu_type_to_its_engine_file():
    from converters.batching import BatchPlan
    from converters.io_config import parse_io_config
    from converters.triton_config import TritonModelConfig, build_config, config_text

    io = parse_io_config('{"inputs": [{"name": "x", "dtype": "float32", "shape": [4]}], '
                         '"outputs": [{"name": "y", "dtype": "float32", "shape": [4]}]}')
    targets = engine_targets((), H100S_AND_A100, rtx=False, engine_path=ENGINE)
    config = build_config(TritonModelConfig(name="m", serve_backend="tensorrt_plan", io=io, triton_inputs=("x",),
                                            plan=BatchPlan.create(4, (None, 4), None), dynamic_batching=True,
                                            max_queue_delay_us=100, cc_model_filenames=cc_model_filenames(targets)))
    text = config_text(config)
    assert dict(text_format.Parse(text, pb.ModelConfig()).cc_model_filenames) == {"9.0": "model.plan",
                                                                                  "8.0": "model.sm80.plan"}


def _engine_manifest(types: list[str] | None, builder_cc: str = "9.0") -> Manifest:
    engine = {"compute_capabilities": types} if types is not None else {}
    return Manifest(model="m", fingerprint="f", serve_backend="tensorrt_plan", precision="fp16", demo=False,
                    sources={}, versions={"tensorrt": "10.8.0"}, gpu={"name": "H100", "compute_capability": builder_cc},
                    source_paths={}, settings={}, profile={}, engine=engine)


def test_the_gate_passes_engines_built_for_every_serving_type_and_names_the_missing_one():
    assert engine_compatibility(_engine_manifest(["9.0", "8.0"]), "10.8.0", ["8.0", "9.0"]).ok
    missing = engine_compatibility(_engine_manifest(["9.0"]), "10.8.0", ["9.0", "8.0"])
    assert not missing.ok and missing.reason == "built for compute capability 9.0, and GPUs of 8.0 must serve it"
    # A manifest from before per-type builds: its builder's GPU is the one type it was built for.
    assert not engine_compatibility(_engine_manifest(None), "10.8.0", ["8.0"]).ok
    assert engine_compatibility(_engine_manifest(None), "10.8.0", ["9.0"]).ok


def test_the_fingerprint_changes_with_the_gpu_types_built_for():
    args = ({"checkpoint": "a"}, {"generate_trt": True}, {"tensorrt": "10.8.0"}, {"compute_capability": "9.0"},
            "tensorrt_plan")
    assert fingerprint(*args, ["9.0"]) != fingerprint(*args, ["9.0", "8.0"])
    assert fingerprint(*args, ["9.0"]) == fingerprint(*args)  # the builder's GPU where no types are given
