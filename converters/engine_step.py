"""The build step: ONNX -> one TensorRT engine per GPU type (`engine_targets`), the first at
--engine-path, each read back and run where a GPU of its type can. Every TensorRT call goes
through `converters.tensorrt_backend`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from converters import export as export_step
from converters import tensorrt_backend
from converters.calibration import calibration_batches
from converters.check import compare
from converters.errors import UserError
from converters.engine_targets import EngineTarget
from converters.manifest import visible_gpus
from converters.precision import PrecisionPlan, fp32_onnx_nodes, plan_precision
from converters.publish import atomic_output
from converters.conversion_settings import ConversionSettings
from converters.tensorrt_backend import TensorRTInstall


@dataclass(frozen=True)
class BuiltEngine:
    target: EngineTarget
    engine: bytes
    build: tensorrt_backend.EngineBuild | None  # None where the file at its path was kept (no --overwrite)


def build_and_check_engines(settings: ConversionSettings, onnx_path: Path, tensorrt: TensorRTInstall,
                            targets: list[EngineTarget], model: torch.nn.Module, sample: dict, result,
                            scratch: Path) -> tuple[list[BuiltEngine], str]:
    """One engine per target (GPU type), each built (or kept), read back and run where a GPU can."""
    has_qdq = export_step.has_qdq_nodes(onnx_path)
    plan = plan_precision(settings.use_fp16, settings.use_int8, tensorrt.strongly_typed,
                          calibration_data=settings.calibration_data, calibration_cache=settings.calibration_cache,
                          onnx_has_qdq=has_qdq)
    built = []
    for target in targets:
        engine, build = _build_or_keep(settings, onnx_path, tensorrt, target, plan, result, scratch)
        _read_back_and_run(settings, tensorrt, target, engine, plan, model, sample, result)
        built.append(BuiltEngine(target, engine, build))
    return built, plan.precision


def _build_or_keep(settings: ConversionSettings, onnx_path: Path, tensorrt: TensorRTInstall, target: EngineTarget,
                   plan: PrecisionPlan, result, scratch: Path) -> tuple[bytes, tensorrt_backend.EngineBuild | None]:
    engine_path = target.engine_path
    expected = settings.plan.profiles(settings.io)
    if engine_path.exists() and not settings.overwrite:
        result.say(f"kept the existing {engine_path} (pass --overwrite to replace it).")
        return engine_path.read_bytes(), None
    request = _engine_request(settings, onnx_path, plan, expected, result, scratch, target)
    build = tensorrt_backend.build_engine(request)
    result.engine_builds.append(build)
    result.timings["build"] = result.timings.get("build", 0.0) + build.seconds
    _check_engine_io(engine_path, {i.name: (i.dtype, i.profile) for i in build.inputs}, build.outputs, expected, settings)
    with atomic_output(engine_path) as tmp:
        tmp.write_bytes(build.engine)
    typing = "strongly typed" if build.strongly_typed else f"{build.fp32_pinned_layers} layers pinned to fp32"
    result.say(f"{build.tensorrt.label} built {engine_path} for {target.label} ({len(build.engine) / 1e6:.1f} MB, "
               f"{plan.precision}, {typing}) in {build.seconds:.1f} s")
    return build.engine, build


def _read_back_and_run(settings: ConversionSettings, tensorrt: TensorRTInstall, target: EngineTarget, engine: bytes,
                       plan: PrecisionPlan, model: torch.nn.Module, sample: dict, result) -> None:
    """On a GPU of the target's type that this TensorRT supports: the engine's IO, and its answers
    against PyTorch on the check sample."""
    gpus = [g for g in visible_gpus() if target.compute_capability in (None, g.compute_capability)]
    runnable = [g for g in gpus if tensorrt.can_run_engines(g.compute_capability)]
    if not runnable:
        where = ", ".join(f"{g.name} ({g.compute_capability})" for g in visible_gpus()) or "no GPU"
        result.say(f"reading the engine back and running it need a GPU of its type ({target.label}) that "
                   f"{tensorrt.label} supports; this machine has {where}: skipped (its inputs and profile were "
                   "checked as TensorRT built them).")
        return
    device = runnable[0].index
    inputs, outputs = tensorrt_backend.inspect_engine(engine, settings.model_name, device)
    _check_engine_io(target.engine_path, inputs, outputs, settings.plan.profiles(settings.io), settings)
    reference = export_step.run_torch(model, settings.io, sample, settings.device)
    ran = tensorrt_backend.run_engine(engine, {k: v for k, v in sample.items() if k in inputs}, settings.model_name,
                                      device)
    check = compare(reference, ran, plan.tolerance)
    result.engine_check = check
    result.say(f"TensorRT ({target.label}) vs PyTorch:\n" + check.report())
    result.gate(check, settings.accept_check_failure, f"the TensorRT engine for {target.label}")


def _engine_request(settings: ConversionSettings, onnx_path: Path, plan: PrecisionPlan, profiles: dict, result,
                    scratch: Path, target: EngineTarget) -> tensorrt_backend.EngineRequest:
    """What the seam is told: the graph in the plan's precision, the profiles, fp32 nodes, calibration."""
    import onnx

    build_from, fp32_nodes = onnx_path, frozenset()
    fp16_path = scratch / "model.fp16.onnx"
    if plan.fp16_onnx and fp16_path.is_file():  # converted for an earlier target of this build
        build_from = fp16_path
    elif plan.fp16_onnx:  # strongly typed: the precision is written into the graph
        build_from = export_step.convert_to_fp16(onnx_path, fp16_path, plan.fp32_onnx_ops)
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
        memory_pool_limit=settings.memory_pool_limit, timing_cache_path=target.engine_path.with_suffix(".timing.cache"),
        fp32_nodes=fp32_nodes, calibration_batches=batches, calibration_cache_path=settings.calibration_cache,
        compute_capability=target.compute_capability, device=target.device)


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
