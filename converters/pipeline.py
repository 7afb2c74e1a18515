"""export -> check -> build -> publish, each step a small function with a plain result."""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from converters import export as export_step
from converters import tensorrt_backend
from converters.calibration import calibration_batches
from converters.check import CheckResult, check_graph, compare, run_onnx
from converters.errors import UserError
from converters.loading import build_model
from converters.manifest import (MANIFEST_NAME, engine_compatibility, file_sha256, fingerprint, gpu_identity,
                                 read_manifest, text_sha256, tool_versions)
from converters.precision import TOLERANCES, fp32_onnx_nodes, plan_precision
from converters.publish import atomic_output, publish_model_folder
from converters.runners import ONNX_RUNNER, TORCH_RUNNER
from converters.settings import ConversionSettings
from converters.tensorrt_backend import EngineBuild, TensorRTInstall, installed_tensorrt
from converters.triton_config import InstancePlan, TritonModelConfig, build_config, check_config_fits_profile, config_text

log = logging.getLogger("converters")

GOLDEN_NAME = "golden.npz"
GOLDEN_BATCH = 2


@dataclass
class ConversionResult:
    model_dir: Path | None = None
    serve_backend: str = ""
    precision: str = "fp32"  # of what is served: the tolerance its golden answers are checked with
    up_to_date: bool = False
    onnx_check: CheckResult | None = None
    engine_build: EngineBuild | None = None  # where an engine was built in this run
    engine_check: CheckResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


def _say(result: ConversionResult, message: str) -> None:
    log.info(message)
    result.messages.append(message)


def resolve_serve_backend(settings: ConversionSettings, tensorrt: TensorRTInstall | None) -> str:
    """`auto` serves the engine where NVIDIA's TensorRT built one, else the ONNX through the python
    runner. A TensorRT-RTX engine is built where asked but never served: NVIDIA's Triton does not load it."""
    if settings.serve_backend != "auto":
        if settings.serve_backend == "tensorrt_plan" and tensorrt is None:
            raise UserError("--serve-backend tensorrt_plan needs TensorRT, which is not installed here; "
                            "build in the builder container on a GPU host or choose python_onnx.")
        if settings.serve_backend == "tensorrt_plan" and not tensorrt.serves_triton:
            raise UserError(f"--serve-backend tensorrt_plan needs NVIDIA's TensorRT; only {tensorrt.label} is installed "
                            "here and NVIDIA's Triton does not load its engines; build in the builder container on a "
                            "GPU host or choose python_onnx.")
        return settings.serve_backend
    return "tensorrt_plan" if settings.generate_trt and tensorrt is not None and tensorrt.serves_triton else "python_onnx"


def source_hashes(settings: ConversionSettings) -> dict[str, str]:
    return {"checkpoint": file_sha256(settings.ckpt_path), "script": file_sha256(settings.model_script_path),
            "io_config": text_sha256(settings.io.source_text)}


def convert(settings: ConversionSettings, load_model: Callable[[], torch.nn.Module] | None = None,
            extra_files: dict[str, Path | bytes | str] | None = None) -> ConversionResult:
    """Run the steps the settings ask for. `load_model` builds the PyTorch model (default: the class
    from --model-script-path with the --ckpt-path state_dict); `extra_files` are published in the
    model folder too (e.g. a tokenizer)."""
    result = ConversionResult()
    for flag, path in (("--ckpt-path", settings.ckpt_path), ("--model-script-path", settings.model_script_path)):
        if not Path(path).exists():
            raise UserError(f"{flag} {path} does not exist.")
    tensorrt = installed_tensorrt()
    serve_backend = resolve_serve_backend(settings, tensorrt)
    result.serve_backend = serve_backend
    if settings.generate_trt and tensorrt is None:
        _say(result, "TensorRT is not installed here: no engine is built; the ONNX is served through the "
                     "python_onnx runner (pass --serve-backend tensorrt_plan to require an engine).")
    elif settings.generate_trt and not tensorrt.serves_triton:
        _say(result, f"{tensorrt.label} is installed here, not NVIDIA's TensorRT: the engine is built at "
                     f"{settings.engine_path} (strongly typed), but NVIDIA's Triton does not load it, so the model is "
                     f"served through {serve_backend}.")

    versions, gpu = tool_versions(), gpu_identity()
    sources = source_hashes(settings)
    key = fingerprint(sources, settings.manifest_settings(), versions, gpu, serve_backend)
    model_dir = settings.triton_repo / settings.model_name
    existing = read_manifest(model_dir)
    if (settings.generate_triton_config and not settings.force and existing and existing.get("fingerprint") == key
            and (model_dir / "config.pbtxt").is_file()):
        result.model_dir, result.up_to_date, result.precision = model_dir, True, existing.get("precision", "fp32")
        _say(result, f"{model_dir} is up to date with these inputs and settings; nothing to do (--force rebuilds).")
        return result

    if existing and serve_backend == "tensorrt_plan":
        compatibility = engine_compatibility(existing, tensorrt.version, gpu.get("compute_capability"))
        if not compatibility.ok:  # never serve an engine built elsewhere: rebuild it here
            _say(result, f"rebuilding {model_dir}: its engine was {compatibility.reason}.")

    started = time.perf_counter()
    if load_model is None:
        model = build_model(settings.model_script_path, settings.model_class_name, settings.ckpt_path, settings.device)
    else:
        model = load_model().to(settings.device).eval()
    result.timings["load"] = time.perf_counter() - started

    onnx_path = Path(settings.onnx_path)
    if settings.generate_onnx:
        if onnx_path.exists() and not settings.overwrite:
            _say(result, f"kept the existing {onnx_path} (pass --overwrite to replace it).")
        else:
            _say(result, f"exporting {settings.model_class_name} to {onnx_path} (opset {settings.opset})")
            exported = export_step.export_onnx(model, settings.io, settings.plan, onnx_path, settings.device, settings.opset)
            result.timings["export"] = exported.seconds
    if not onnx_path.is_file():
        raise UserError(f"--onnx-path {onnx_path} does not exist; add --generate-onnx to export it first.")

    # Check: the ONNX against PyTorch on the same sample. A failure blocks everything after it.
    started = time.perf_counter()
    check_graph(onnx_path)
    graph_inputs = export_step.onnx_graph_inputs(onnx_path)
    triton_inputs = _resolve_triton_inputs(settings, graph_inputs)
    sample = export_step.make_sample(settings.io, settings.plan)
    reference = export_step.run_torch(model, settings.io, sample, settings.device)
    result.onnx_check = compare(reference, run_onnx(onnx_path, sample), TOLERANCES["fp32"])
    result.timings["check"] = time.perf_counter() - started
    _say(result, "ONNX Runtime vs PyTorch:\n" + result.onnx_check.report())
    _gate(result.onnx_check, settings, "the ONNX")

    if settings.generate_trt:  # refuse an impossible precision request before any build work
        plan_precision(settings.use_fp16, settings.use_int8, bool(tensorrt and tensorrt.strongly_typed),
                       calibration_data=settings.calibration_data, calibration_cache=settings.calibration_cache,
                       onnx_has_qdq=export_step.has_qdq_nodes(onnx_path))

    publish_files: dict[str, Path | bytes | str] = dict(extra_files or {})
    precision = "fp32"
    with tempfile.TemporaryDirectory(prefix="convert-") as scratch:
        if settings.generate_trt and tensorrt is not None:
            engine, engine_precision = _build_and_check_engine(settings, onnx_path, tensorrt, model, sample, result,
                                                               Path(scratch))
            if serve_backend == "tensorrt_plan":
                publish_files["1/model.plan"], precision = engine, engine_precision
        if serve_backend == "python_torch":
            precision = "fp16" if settings.use_fp16 and settings.device == "cuda" else "fp32"
            publish_files["1/model.pt"] = _trace(model, triton_inputs, settings.device, sample, Path(scratch),
                                                 half=precision == "fp16")
            publish_files["1/model.py"] = TORCH_RUNNER
        elif serve_backend in ("python_onnx", "onnxruntime_onnx"):
            publish_files["1/model.onnx"] = onnx_path
            if serve_backend == "python_onnx":
                publish_files["1/model.py"] = ONNX_RUNNER

        if not settings.generate_triton_config:
            return result

        config = build_config(TritonModelConfig(
            name=settings.model_name, serve_backend=serve_backend, io=settings.io, triton_inputs=triton_inputs,
            plan=settings.plan, dynamic_batching=settings.dynamic_batching,
            max_queue_delay_us=settings.max_queue_delay_us, instances=_instances(settings, serve_backend),
            warmup=settings.warmup,
            parameters={"precision": precision, "device": settings.device} if serve_backend == "python_torch" else {}))
        check_config_fits_profile(config, settings.plan.profiles(settings.io))
        golden_inputs = export_step.make_sample(settings.io, settings.plan, batch=min(GOLDEN_BATCH, settings.plan.max_batch_size), seed=1)
        golden_outputs = export_step.run_torch(model, settings.io, golden_inputs, settings.device)
        publish_files["config.pbtxt"] = config_text(config)
        publish_files[GOLDEN_NAME] = _golden_bytes(golden_inputs, golden_outputs, triton_inputs, TOLERANCES[precision])
        manifest = {
            "model": settings.model_name, "fingerprint": key, "serve_backend": serve_backend,
            "precision": precision, "demo": settings.demo, "sources": sources,
            "source_paths": {"checkpoint": str(settings.ckpt_path), "script": str(settings.model_script_path)},
            "settings": settings.manifest_settings(),
            "profile": {name: [list(s) for s in shapes] for name, shapes in settings.plan.profiles(settings.io).items()},
            "versions": versions, "gpu": gpu, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if result.engine_build is not None:  # which TensorRT built what, and whether it is what is served
            manifest["engine"] = dict(result.engine_build.manifest_entry(), path=str(settings.engine_path),
                                      served=serve_backend == "tensorrt_plan")
        publish_files[MANIFEST_NAME] = json.dumps(manifest, indent=2) + "\n"
        if model_dir.exists() and not settings.overwrite and existing is not None:
            _say(result, f"replacing {model_dir}: its manifest says it was built from other inputs or settings.")
        result.model_dir = publish_model_folder(settings.triton_repo, settings.model_name, publish_files)
        result.precision = precision
    _say(result, f"published {result.model_dir} ({serve_backend}, {precision})")
    return result


def _resolve_triton_inputs(settings: ConversionSettings, graph_inputs: tuple[str, ...]) -> tuple[str, ...]:
    if settings.triton_inputs is None:
        return graph_inputs
    known = set(settings.io.input_names)
    unknown = [n for n in settings.triton_inputs if n not in known]
    if unknown:
        raise UserError(f"--triton-inputs names {', '.join(unknown)}, which --model-io-config does not list "
                        f"(its inputs: {', '.join(settings.io.input_names)}).")
    unused = [n for n in settings.triton_inputs if n not in graph_inputs]
    if unused:
        raise UserError(f"--triton-inputs names {', '.join(unused)}, which the exported graph does not use; "
                        f"drop it (the graph takes {', '.join(graph_inputs)}).")
    required = [n for n in graph_inputs if n not in settings.triton_inputs]
    if required:
        raise UserError(f"--triton-inputs leaves out {', '.join(required)}, which the model requires; add it.")
    return tuple(settings.triton_inputs)


def _instances(settings: ConversionSettings, serve_backend: str) -> InstancePlan:
    if settings.instances.kind != "auto":
        return settings.instances
    # python_torch drives the GPU from CPU instances (its `device` parameter): see torch_runner.py.
    kind = "KIND_GPU" if serve_backend == "tensorrt_plan" or (settings.device == "cuda" and serve_backend != "python_torch") else "KIND_CPU"
    return InstancePlan(settings.instances.count, kind, settings.instances.gpus if kind == "KIND_GPU" else ())


def _gate(check: CheckResult, settings: ConversionSettings, what: str) -> None:
    if check.ok:
        return
    if settings.accept_check_failure:
        log.warning("%s is over tolerance; publishing anyway because --accept-check-failure was given", what)
        return
    worst = max(check.errors, key=lambda e: e.max_abs)
    raise UserError(f"{what} differs from PyTorch on output '{worst.name}' (max abs error {worst.max_abs:.3g}, "
                    f"over atol={check.tolerance[0]:g}); nothing was published (--accept-check-failure overrides).")


def _golden_bytes(inputs: dict, outputs: dict, triton_inputs: tuple[str, ...], tolerance: tuple[float, float]) -> bytes:
    import io

    buffer = io.BytesIO()
    arrays = {f"input__{k}": v for k, v in inputs.items() if k in triton_inputs}
    arrays.update({f"output__{k}": v for k, v in outputs.items()})
    arrays["tolerance"] = np.asarray(tolerance, dtype=np.float64)
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _build_and_check_engine(settings: ConversionSettings, onnx_path: Path, tensorrt: TensorRTInstall,
                            model: torch.nn.Module, sample: dict, result: ConversionResult, scratch: Path):
    """Build (or keep) the engine at --engine-path; read it back and run it where this GPU can."""
    has_qdq = export_step.has_qdq_nodes(onnx_path)
    plan = plan_precision(settings.use_fp16, settings.use_int8, tensorrt.strongly_typed,
                          calibration_data=settings.calibration_data, calibration_cache=settings.calibration_cache,
                          onnx_has_qdq=has_qdq)
    engine_path = Path(settings.engine_path)
    expected = settings.plan.profiles(settings.io)
    if engine_path.exists() and not settings.overwrite:
        _say(result, f"kept the existing {engine_path} (pass --overwrite to replace it).")
        engine = engine_path.read_bytes()
    else:
        build = tensorrt_backend.build_engine(_engine_request(settings, onnx_path, plan, expected, result, scratch))
        result.engine_build, engine = build, build.engine
        result.timings["build"] = build.seconds
        _check_engine_io(engine_path, {i.name: (i.dtype, i.profile) for i in build.inputs}, build.outputs, expected,
                         settings)
        with atomic_output(engine_path) as tmp:
            tmp.write_bytes(engine)
        _say(result, f"{build.tensorrt.label} built {engine_path} ({len(engine) / 1e6:.1f} MB, {plan.precision}, "
                     f"{'strongly typed' if build.strongly_typed else f'{build.fp32_pinned_layers} layers pinned to fp32'}) "
                     f"in {build.seconds:.1f} s")
    gpu = gpu_identity()
    if not tensorrt.can_run_engines(gpu.get("compute_capability")):
        where = f"{gpu['name']} (compute capability {gpu['compute_capability']})" if gpu.get("name") else "no GPU"
        _say(result, f"reading the engine back and running it need a GPU that {tensorrt.label} supports; this machine "
                     f"has {where}: skipped (its inputs and profile were checked as TensorRT built them).")
        return engine, plan.precision
    inputs, outputs = tensorrt_backend.inspect_engine(engine, settings.model_name)
    _check_engine_io(engine_path, inputs, outputs, expected, settings)
    reference = export_step.run_torch(model, settings.io, sample, settings.device)
    ran = tensorrt_backend.run_engine(engine, {k: v for k, v in sample.items() if k in inputs}, settings.model_name)
    result.engine_check = compare(reference, ran, plan.tolerance)
    _say(result, "TensorRT vs PyTorch:\n" + result.engine_check.report())
    _gate(result.engine_check, settings, "the TensorRT engine")
    return engine, plan.precision


def _engine_request(settings: ConversionSettings, onnx_path: Path, plan, profiles: dict, result: ConversionResult,
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
        _say(result, calibration.summary())
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


def _trace(model: torch.nn.Module, inputs: tuple[str, ...], device: str, sample: dict, scratch: Path,
           half: bool = False) -> Path:
    """TorchScript of the model for the python_torch runner (traced on the check sample, taking
    the served inputs in the config's order). fp16 is traced in fp16: tracing records dtypes, so
    a module traced in fp32 and cast afterwards would mix precisions."""
    import copy
    import warnings

    args = tuple(torch.from_numpy(sample[name]).to(device) for name in inputs)
    if half:
        model = copy.deepcopy(model).half()
        args = tuple(a.half() if a.is_floating_point() else a for a in args)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        traced = torch.jit.trace(model, args, check_trace=False, strict=False)
    path = scratch / "model.pt"
    traced.save(str(path))
    return path
