"""The build step: ONNX -> TensorRT engine at --engine-path, then read back and run where the GPU
can. Every TensorRT call goes through `converters.tensorrt_backend`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from converters import export as export_step
from converters import tensorrt_backend
from converters.calibration import calibration_batches
from converters.check import compare
from converters.errors import UserError
from converters.manifest import gpu_identity
from converters.precision import PrecisionPlan, fp32_onnx_nodes, plan_precision
from converters.publish import atomic_output
from converters.conversion_settings import ConversionSettings
from converters.tensorrt_backend import TensorRTInstall


def build_and_check_engine(settings: ConversionSettings, onnx_path: Path, tensorrt: TensorRTInstall,
                           model: torch.nn.Module, sample: dict, result, scratch: Path) -> tuple[bytes, str]:
    """Build (or keep) the engine at --engine-path; read it back and run it where this GPU can."""
    has_qdq = export_step.has_qdq_nodes(onnx_path)
    plan = plan_precision(settings.use_fp16, settings.use_int8, tensorrt.strongly_typed,
                          calibration_data=settings.calibration_data, calibration_cache=settings.calibration_cache,
                          onnx_has_qdq=has_qdq)
    engine_path = Path(settings.engine_path)
    expected = settings.plan.profiles(settings.io)
    if engine_path.exists() and not settings.overwrite:
        result.say(f"kept the existing {engine_path} (pass --overwrite to replace it).")
        engine = engine_path.read_bytes()
    else:
        build = tensorrt_backend.build_engine(_engine_request(settings, onnx_path, plan, expected, result, scratch))
        result.engine_build, engine = build, build.engine
        result.timings["build"] = build.seconds
        _check_engine_io(engine_path, {i.name: (i.dtype, i.profile) for i in build.inputs}, build.outputs, expected,
                         settings)
        with atomic_output(engine_path) as tmp:
            tmp.write_bytes(engine)
        typing = "strongly typed" if build.strongly_typed else f"{build.fp32_pinned_layers} layers pinned to fp32"
        result.say(f"{build.tensorrt.label} built {engine_path} ({len(engine) / 1e6:.1f} MB, {plan.precision}, "
                   f"{typing}) in {build.seconds:.1f} s")
    gpu = gpu_identity()
    if not tensorrt.can_run_engines(gpu.get("compute_capability")):
        where = f"{gpu['name']} (compute capability {gpu['compute_capability']})" if gpu.get("name") else "no GPU"
        result.say(f"reading the engine back and running it need a GPU that {tensorrt.label} supports; this machine "
                   f"has {where}: skipped (its inputs and profile were checked as TensorRT built them).")
        return engine, plan.precision
    inputs, outputs = tensorrt_backend.inspect_engine(engine, settings.model_name)
    _check_engine_io(engine_path, inputs, outputs, expected, settings)
    reference = export_step.run_torch(model, settings.io, sample, settings.device)
    ran = tensorrt_backend.run_engine(engine, {k: v for k, v in sample.items() if k in inputs}, settings.model_name)
    result.engine_check = compare(reference, ran, plan.tolerance)
    result.say("TensorRT vs PyTorch:\n" + result.engine_check.report())
    result.gate(result.engine_check, settings.accept_check_failure, "the TensorRT engine")
    return engine, plan.precision


def _engine_request(settings: ConversionSettings, onnx_path: Path, plan: PrecisionPlan, profiles: dict, result,
                    scratch: Path) -> tensorrt_backend.EngineRequest:
    """What the seam is told: the graph in the plan's precision, the profiles, fp32 nodes, calibration."""
    import onnx

    build_from, fp32_nodes = onnx_path, frozenset()
    if plan.fp16_onnx:  # strongly typed: the precision is written into the graph
        build_from = export_step.convert_to_fp16(onnx_path, scratch / "model.fp16.onnx", plan.fp32_onnx_ops)
    elif plan.builder_flags:  # weak typing: these nodes' layers are pinned to fp32
        fp32_nodes = fp32_onnx_nodes(onnx.load(str(onnx_path), load_external_data=False).graph.node, plan.fp32_onnx_ops)
    batches = ()
    if plan.int8_source == "calibration-data":
        graph_inputs = export_step.onnx_graph_inputs(onnx_path)
        with np.load(settings.calibration_data) as data:
            calibration = calibration_batches(dict(data), {n: profiles[n][1] for n in graph_inputs if n in profiles},
                                              settings.calibration_data)
        result.say(calibration.summary())
        batches = calibration.batches
    return tensorrt_backend.EngineRequest(
        model_name=settings.model_name, onnx_path=build_from, profiles=profiles, plan=plan,
        memory_pool_limit=settings.memory_pool_limit, timing_cache_path=Path(settings.engine_path).with_suffix(".timing.cache"),
        fp32_nodes=fp32_nodes, calibration_batches=batches, calibration_cache_path=settings.calibration_cache)


def _check_engine_io(engine_path: Path, inputs: dict, outputs: dict, expected: dict, settings: ConversionSettings) -> None:
    """The engine takes exactly the profiles the batch plan (and so config.pbtxt) says."""
    for name, (_, shapes) in inputs.items():
        if name not in expected:
            raise UserError(f"the engine at {engine_path} takes input '{name}', which --model-io-config lacks.")
        if tuple(tuple(s) for s in shapes) != tuple(tuple(s) for s in expected[name]):
            raise UserError(f"the engine at {engine_path} has profile {shapes} for '{name}', expected {expected[name]}; "
                            "rebuild it with --overwrite.")
    missing_outputs = [n for n in settings.io.output_names if n not in outputs]
    if missing_outputs:
        raise UserError(f"the engine at {engine_path} lacks the outputs {missing_outputs}; rebuild it with --overwrite.")
