"""The builder code run for real against the TensorRT installed here (TensorRT for RTX in CI: it
builds engines on the CPU): every model's real exported graph, demo size, parsed and built in
fp32 and in strongly typed fp16 with the profiles `BatchPlan` derives. What it proves: parser
coverage, profiles, strongly typed fp16 graphs, serialization. What it does not: TensorRT 10's
weak typing, running an engine, NVIDIA's Triton loading it."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from converters.errors import UserError
from converters.tensorrt_backend import installed_tensorrt
from triton_models.common import BuildOptions
from triton_models.registry import get


CORE_MODELS = ("caption_classification", "yolox", "e5_small_v2")
MAX_BATCH = 4
FIGURES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def print_figures():
    """The build times and engine sizes of this run, printed for the record (not asserted)."""
    yield
    if FIGURES:
        print("\n[figure] TensorRT engine builds (demo sizes, batch 1..4):\n  " + "\n  ".join(FIGURES))


@pytest.fixture(scope="module")
def tensorrt():
    install = installed_tensorrt()
    if install is None:  # a missing install fails the tier: it is part of the test dependencies
        pytest.fail("no TensorRT here: `pip install -e .[test]` installs TensorRT for RTX (make test does it)")
    return install


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("demo_checkpoints")


def _config(model_dir: Path) -> pb.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())


def _numpy_dtype(data_type: int) -> str:
    from tritonclient.utils import triton_to_np_dtype

    return np.dtype(triton_to_np_dtype(pb.DataType.Name(data_type).removeprefix("TYPE_").replace("STRING", "BYTES"))).name


def _assert_engine_kind(entry: dict, tensorrt, precision: str) -> None:
    assert entry["module"] == tensorrt.module and entry["tensorrt"] == tensorrt.label
    assert entry["precision"] == precision and entry["strongly_typed"] == tensorrt.strongly_typed
    dtypes = entry["layer_output_dtypes"]
    if precision == "fp16":  # the fp16 graph reached TensorRT, with the kept ops still in fp32
        assert dtypes.get("HALF", 0) > 0 and dtypes.get("FLOAT", 0) > 0, dtypes
    else:
        assert "HALF" not in dtypes, dtypes


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("key", CORE_MODELS)
def test_model_graph_builds_with_the_plans_profiles(key, precision, tensorrt, demo_folder, tmp_path, capsys):
    spec = get(key)
    options = BuildOptions(checkpoint=spec.builder.make_demo_checkpoint(demo_folder), repo=tmp_path / "repo",
                           work_dir=tmp_path / "work", max_batch_size=MAX_BATCH, precision=precision, demo=True)
    spec.builder.build(options)
    core = options.repo / spec.triton_names[0]
    manifest = json.loads((core / "manifest.json").read_text())
    config = _config(core)
    entry = manifest["engine"]

    _assert_engine_kind(entry, tensorrt, precision)
    engine = Path(entry["path"])
    assert engine == options.work_dir / spec.triton_names[0] / "model.plan"
    assert engine.is_file() and engine.stat().st_size == entry["bytes"] > 100_000
    assert manifest["versions"]["tensorrt"] == tensorrt.version
    # What is served is decided as before: NVIDIA's TensorRT serves its plan, an RTX engine is not served.
    assert entry["served"] == tensorrt.serves_triton
    assert manifest["serve_backend"] == ("tensorrt_plan" if tensorrt.serves_triton else "python_onnx")

    # The network's inputs, dtypes and profiles are exactly those of the batch plan and config.pbtxt.
    assert set(entry["inputs"]) == {i.name for i in config.input}
    for tensor in config.input:
        built = entry["inputs"][tensor.name]
        assert built["dtype"] == _numpy_dtype(tensor.data_type), tensor.name
        assert built["profile"] == manifest["profile"][tensor.name], tensor.name
        low, opt, high = built["profile"]
        assert low[0] == 1 and high[0] == config.max_batch_size == MAX_BATCH
        assert [d if d != -1 else o for d, o in zip(tensor.dims, opt[1:])] == opt[1:], tensor.name
    assert set(entry["outputs"]) == {o.name for o in config.output}
    for tensor in config.output:
        assert entry["outputs"][tensor.name] == _numpy_dtype(tensor.data_type), tensor.name
    FIGURES.append(f"{spec.triton_names[0]:<14} {precision}  built in {entry['seconds']:5.2f} s  "
                   f"{entry['bytes'] / 1e6:6.1f} MB  ({tensorrt.label})")


def test_one_engine_per_gpu_type_each_built_for_its_type(tensorrt, demo_folder, tmp_path):
    """Builders build once per GPU type: the first engine sits at --engine-path, the next beside
    it, and the manifest records each. TensorRT for RTX (CI) is told two types and needs no GPU;
    NVIDIA's TensorRT builds for the types of the GPUs it sees."""
    from converters.engine_targets import sm_suffix
    from converters.manifest import visible_gpus

    types = ("8.6", "8.9") if tensorrt.rtx else tuple(dict.fromkeys(g.compute_capability for g in visible_gpus()))
    assert types, "NVIDIA's TensorRT is installed but this process sees no GPU to build on"
    spec = get("caption_classification")
    checkpoint = spec.builder.make_demo_checkpoint(demo_folder)

    def build(name: str, gpu_types: tuple[str, ...]) -> tuple[dict, Path]:
        options = BuildOptions(checkpoint=checkpoint, repo=tmp_path / name / "repo", work_dir=tmp_path / name / "work",
                               max_batch_size=MAX_BATCH, precision="fp16", gpu_types=gpu_types, demo=True)
        spec.builder.build(options)
        core = options.repo / spec.triton_names[0]
        return json.loads((core / "manifest.json").read_text())["engine"], options.work_dir / spec.triton_names[0]

    entry, work = build("all", types)
    assert entry["compute_capabilities"] == list(types) and entry["compute_capability"] == types[0]
    files = [work / "model.plan"] + [work / f"model.{sm_suffix(cc)}.plan" for cc in types[1:]]
    for cc, path in zip(types, files):
        assert entry["engines"][cc]["path"] == str(path) and path.stat().st_size == entry["engines"][cc]["bytes"]
    if tensorrt.rtx:  # RTX builds are deterministic: each file is the engine of its type
        assert files[0].read_bytes() != files[1].read_bytes()
        alone, alone_work = build("alone", ("8.9",))
        assert alone["compute_capabilities"] == ["8.9"]
        assert (alone_work / "model.plan").read_bytes() == files[1].read_bytes()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_eclair_vision_encoder_builds(precision, tensorrt, demo_folder, tmp_path):
    from triton_models.eclair import trtllm
    from triton_models.eclair.build import make_demo_checkpoint

    checkpoint = make_demo_checkpoint(demo_folder)
    settings = trtllm.encoder_settings(checkpoint, tmp_path / "work", tmp_path / "engines", MAX_BATCH, "cpu", precision)
    result = trtllm.build_encoder(checkpoint, tmp_path / "work", tmp_path / "engines", MAX_BATCH, "cpu", precision)
    build = result.engine_build
    _assert_engine_kind(build.manifest_entry(), tensorrt, precision)
    assert (tmp_path / "engines" / "visual_encoder.plan").read_bytes() == build.engine
    expected = settings.plan.profiles(settings.io)
    assert {i.name: i.profile for i in build.inputs} == expected
    assert {i.name: i.dtype for i in build.inputs} == {"pixel_values": "float32"}
    assert build.outputs == {"encoder_states": "float32"}
    FIGURES.append(f"eclair encoder {precision}  built in {build.seconds:5.2f} s  {len(build.engine) / 1e6:6.1f} MB  "
                   f"({tensorrt.label})")


def test_fp32_pinning_on_the_real_deberta_graph_spares_integer_layers(tensorrt, demo_folder, tmp_path):
    """TensorRT 10 weak typing: pin normalisation/softmax layers by their ONNX node, never an INT64
    `Expand` whose name happens to contain `exp` (that failed the build under OBEY_PRECISION_CONSTRAINTS)."""
    import onnx

    from converters.precision import FP32_ONNX_OPS, fp32_onnx_nodes, select_fp32_layers
    from converters.tensorrt_backend import network_layers

    spec = get("caption_classification")
    options = BuildOptions(checkpoint=spec.builder.make_demo_checkpoint(demo_folder), repo=tmp_path / "repo",
                           work_dir=tmp_path / "work", max_batch_size=MAX_BATCH, serve_backend="python_onnx", demo=True)
    spec.builder.build(options)
    onnx_path = options.work_dir / "deberta_large" / "model.onnx"
    layers = network_layers(onnx_path, "deberta_large")
    nodes = fp32_onnx_nodes(onnx.load(str(onnx_path), load_external_data=False).graph.node, FP32_ONNX_OPS)
    chosen = set(select_fp32_layers(layers, nodes))

    expands = [layer for layer in layers if "Expand" in layer.name and layer.output_dtypes == ("INT64",)]
    assert expands, "the demo DeBERTa graph has INT64 Expand layers (the case the old substring rule pinned)"
    assert not chosen & {layer.index for layer in expands}
    assert all(set(layers[i].output_dtypes) <= {"FLOAT", "HALF", "BF16"} for i in chosen)
    softmax = {layer.index for layer in layers if layer.type == "SOFTMAX"}
    assert softmax and softmax <= chosen
    layernorm = {layer.index for layer in layers if "LayerNorm" in layer.metadata and layer.output_dtypes == ("FLOAT",)
                 and layer.type != "CONSTANT"}
    assert layernorm and layernorm <= chosen


def test_manifest_reads_tensorrt_from_the_imported_module(tensorrt):
    from converters.manifest import tool_versions

    module = importlib.import_module(tensorrt.module)
    versions = tool_versions()
    assert versions["tensorrt"] == module.__version__ and versions["tensorrt_module"] == tensorrt.module


def test_a_binding_exception_is_one_error_naming_model_and_step(tensorrt, demo_folder, tmp_path):
    """What the bindings raise (here: a builder flag this TensorRT lacks, as TensorRT 10's FP16 is
    missing from TensorRT 11 and RTX) comes out as one line naming the model and the step."""
    import dataclasses

    from converters import tensorrt_backend
    from converters.precision import plan_precision

    spec = get("e5_small_v2")
    options = BuildOptions(checkpoint=spec.builder.make_demo_checkpoint(demo_folder), repo=tmp_path / "repo",
                           work_dir=tmp_path / "work", max_batch_size=MAX_BATCH, serve_backend="python_onnx", demo=True)
    spec.builder.build(options)
    plan = dataclasses.replace(plan_precision(False, False, True), builder_flags=("NO_SUCH_FLAG",))
    request = tensorrt_backend.EngineRequest(
        model_name="e5_small_v2", onnx_path=options.work_dir / "e5_small_v2" / "model.onnx", profiles={}, plan=plan,
        memory_pool_limit=1 << 30, timing_cache_path=tmp_path / "timing.cache")
    with pytest.raises(UserError) as raised:
        tensorrt_backend.build_engine(request)
    message = str(raised.value)
    assert message.startswith("TensorRT failed to configure the build for model 'e5_small_v2': ")
    assert "NO_SUCH_FLAG" in message and "\n" not in message


def test_a_graph_the_parser_rejects_names_the_node(tensorrt, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from converters import tensorrt_backend
    from converters.precision import plan_precision

    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="custom_node", domain="example.custom")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    request = tensorrt_backend.EngineRequest(
        model_name="bad_model", onnx_path=tmp_path / "bad.onnx", profiles={"x": ((1, 4), (2, 4), (4, 4))},
        plan=plan_precision(False, False, tensorrt.strongly_typed), memory_pool_limit=1 << 30,
        timing_cache_path=tmp_path / "timing.cache")
    with pytest.raises(UserError, match=r"cannot parse .*bad.onnx for model 'bad_model': node custom_node"):
        tensorrt_backend.build_engine(request)
    assert not (tmp_path / "timing.cache").exists()
