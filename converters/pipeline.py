"""export -> check -> build -> publish: `convert()` runs the steps the settings ask for, each a
small method with a plain result on `ConversionResult`."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from converters import export as export_step
from converters.check import CheckResult, check_graph, compare, run_onnx
from converters.compiled_step import export_program, sequence_buckets, warm_and_check
from converters.engine_step import BuiltEngine, build_and_check_engines
from converters.engine_targets import EngineTarget, cc_model_filenames, engine_targets
from converters.errors import UserError
from converters.fp8 import check_fp8_device, choose_for_model
from converters.fp8 import gate as fp8_gate
from converters.loading import build_model
from converters.manifest import (engine_compatibility, file_sha256, fingerprint, gpu_identity, text_sha256,
                                 tool_versions, visible_gpus)
from converters.model_folder import Golden, Manifest, current_manifest, publish
from converters.precision import TOLERANCES, plan_precision
from converters.runners import MODEL_SUPPORT, MODEL_SUPPORT_FILE
from converters.serve_backends import ServeBackend, serve_backend
from converters.conversion_settings import ConversionSettings
from converters.tensorrt_backend import EngineBuild, TensorRTInstall, installed_tensorrt
from converters.triton_config import InstancePlan, TritonModelConfig, build_config, check_config_fits_profile, config_text

log = logging.getLogger("converters")


@dataclass
class ConversionResult:
    model_dir: Path | None = None
    serve_backend: str = ""
    precision: str = "fp32"  # of what is served: the tolerance its golden answers are checked with
    up_to_date: bool = False
    onnx_check: CheckResult | None = None
    engine_builds: list[EngineBuild] = field(default_factory=list)  # one per GPU type built in this run
    engine_check: CheckResult | None = None
    accuracy: dict | None = None  # what an accuracy gate measured (fp8), recorded in the manifest
    timings: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def engine_build(self) -> EngineBuild | None:
        """The first GPU type's build (the one at --engine-path), where one was made in this run."""
        return self.engine_builds[0] if self.engine_builds else None

    def say(self, message: str) -> None:
        log.info(message)
        self.messages.append(message)

    def gate(self, check: CheckResult, accept_failure: bool, what: str) -> None:
        """A failed check blocks publish unless the user said otherwise."""
        if check.ok:
            return
        if accept_failure:
            log.warning("%s is over tolerance; publishing anyway because --accept-check-failure was given", what)
            return
        worst = max(check.errors, key=lambda e: e.max_abs)
        raise UserError(f"{what} differs from PyTorch on output '{worst.name}' (max abs error {worst.max_abs:.3g}, "
                        f"over atol={check.tolerance[0]:g}); nothing was published (--accept-check-failure overrides).")


def resolve_serve_backend(settings: ConversionSettings, tensorrt: TensorRTInstall | None) -> str:
    """`auto` serves the engine where NVIDIA's TensorRT built one, else the ONNX through the python
    runner. A TensorRT-RTX engine is built where asked but never served: NVIDIA's Triton does not load it."""
    if settings.serve_backend != "auto":
        if serve_backend(settings.serve_backend).engine and tensorrt is None:
            raise UserError("--serve-backend tensorrt_plan needs TensorRT, which is not installed here; "
                            "build in the builder container on a GPU host or choose python_onnx.")
        if serve_backend(settings.serve_backend).engine and not tensorrt.serves_triton:
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
    for flag, path in (("--ckpt-path", settings.ckpt_path), ("--model-script-path", settings.model_script_path)):
        if not Path(path).exists():
            raise UserError(f"{flag} {path} does not exist.")
    conversion = _Conversion(settings, installed_tensorrt())
    if conversion.is_current():
        return conversion.result
    conversion.load(load_model)
    conversion.export()
    conversion.check()
    with tempfile.TemporaryDirectory(prefix="convert-") as scratch:
        files = conversion.artifacts(Path(scratch))
        if settings.generate_triton_config:
            conversion.publish({**(extra_files or {}), **files})
    return conversion.result


class _Conversion:
    """One run of the steps; what each step makes is kept on it for the next."""

    def __init__(self, settings: ConversionSettings, tensorrt: TensorRTInstall | None) -> None:
        self.settings, self.tensorrt, self.result = settings, tensorrt, ConversionResult()
        self.backend: ServeBackend = serve_backend(resolve_serve_backend(settings, tensorrt))
        self.result.serve_backend = self.backend.name
        if settings.generate_trt and tensorrt is None:
            self.result.say("TensorRT is not installed here: no engine is built; the ONNX is served through the "
                            "python_onnx runner (pass --serve-backend tensorrt_plan to require an engine).")
        elif settings.generate_trt and not tensorrt.serves_triton:
            self.result.say(f"{tensorrt.label} is installed here, not NVIDIA's TensorRT: the engine is built at "
                            f"{settings.engine_path} (strongly typed), but NVIDIA's Triton does not load it, so the "
                            f"model is served through {self.backend.name}.")
        self.versions, self.gpu, self.sources = tool_versions(), gpu_identity(), source_hashes(settings)
        self.targets: list[EngineTarget] = []
        if (settings.generate_trt or self.backend.engine) and tensorrt is not None:
            self.targets = engine_targets(settings.gpu_types, list(visible_gpus()), tensorrt.rtx,
                                          Path(settings.engine_path), serve_backend("tensorrt_plan").model_file)
        self.engine_types = [t.compute_capability for t in self.targets if t.compute_capability]
        self.key = fingerprint(self.sources, settings.manifest_settings(), self.versions, self.gpu, self.backend.name,
                               self.engine_types)
        self.model_dir = settings.triton_repo / settings.model_name
        self.model: torch.nn.Module | None = None
        self.onnx_path = Path(settings.onnx_path)
        self.triton_inputs: tuple[str, ...] = ()
        self.sample: dict = {}
        self.engines: list[BuiltEngine] = []  # one per target, built or kept
        if settings.use_fp8:  # refused before any work, in one sentence
            if self.backend.name != "python_compiled":
                raise UserError(f"--use-fp8 is for --serve-backend python_compiled (FP8 in the compiled PyTorch "
                                f"program), not {self.backend.name}; TensorRT engines take --use-fp16 or --use-int8.")
            check_fp8_device(settings.device)

    def is_current(self) -> bool:
        """Skip check: published from exactly these inputs and settings."""
        settings = self.settings
        current = current_manifest(self.model_dir, self.key)
        if settings.generate_triton_config and not settings.force and current is not None:
            self.result.model_dir, self.result.up_to_date, self.result.precision = self.model_dir, True, current.precision
            self.result.accuracy = current.accuracy  # fp8: which layers are FP8 (the caption golden runs them)
            self.result.say(f"{self.model_dir} is up to date with these inputs and settings; nothing to do "
                            "(--force rebuilds).")
            return True
        existing = Manifest.read(self.model_dir) if self.backend.engine else None
        if existing:
            compatibility = engine_compatibility(existing, self.tensorrt.version, self.engine_types)
            if not compatibility.ok:  # never serve an engine built elsewhere: rebuild it here
                self.result.say(f"rebuilding {self.model_dir}: its engine was {compatibility.reason}.")
        return False

    def load(self, load_model: Callable[[], torch.nn.Module] | None) -> None:
        started, s = time.perf_counter(), self.settings
        if load_model is None:
            self.model = build_model(s.model_script_path, s.model_class_name, s.ckpt_path, s.device)
        else:
            self.model = load_model().to(s.device).eval()
        self.result.timings["load"] = time.perf_counter() - started

    def export(self) -> None:
        s = self.settings
        if s.generate_onnx:
            if self.onnx_path.exists() and not s.overwrite:
                self.result.say(f"kept the existing {self.onnx_path} (pass --overwrite to replace it).")
            else:
                self.result.say(f"exporting {s.model_class_name} to {self.onnx_path} (opset {s.opset})")
                exported = export_step.export_onnx(self.model, s.io, s.plan, self.onnx_path, s.device, s.opset)
                self.result.timings["export"] = exported.seconds
        if not self.onnx_path.is_file():
            raise UserError(f"--onnx-path {self.onnx_path} does not exist; add --generate-onnx to export it first.")

    def check(self) -> None:
        """The ONNX against PyTorch on the same sample. A failure blocks everything after it."""
        s, started = self.settings, time.perf_counter()
        check_graph(self.onnx_path)
        self.triton_inputs = _resolve_triton_inputs(s, export_step.onnx_graph_inputs(self.onnx_path))
        self.sample = export_step.make_sample(s.io, s.plan)
        reference = export_step.run_torch(self.model, s.io, self.sample, s.device)
        self.result.onnx_check = compare(reference, run_onnx(self.onnx_path, self.sample), TOLERANCES["fp32"])
        self.result.timings["check"] = time.perf_counter() - started
        self.result.say("ONNX Runtime vs PyTorch:\n" + self.result.onnx_check.report())
        self.result.gate(self.result.onnx_check, s.accept_check_failure, "the ONNX")
        if s.generate_trt:  # refuse an impossible precision request before any build work
            plan_precision(s.use_fp16, s.use_int8, bool(self.tensorrt and self.tensorrt.strongly_typed),
                           calibration_data=s.calibration_data, calibration_cache=s.calibration_cache,
                           onnx_has_qdq=export_step.has_qdq_nodes(self.onnx_path))

    def artifacts(self, scratch: Path) -> dict[str, Path | bytes | str]:
        """The engine where asked (built even when not served), and what the serve backend publishes."""
        s, backend, files = self.settings, self.backend, {}
        self.result.precision = "fp32"
        engine_precision = None
        if self.targets:
            self.engines, engine_precision = build_and_check_engines(s, self.onnx_path, self.tensorrt, self.targets,
                                                                self.model, self.sample, self.result, scratch)
        model_file = f"1/{backend.model_file}"
        if backend.artifact == "engine":  # one file per GPU type; config.pbtxt maps each type to its file
            files.update({f"1/{built.target.model_file}": built.engine for built in self.engines})
            self.result.precision = engine_precision
        elif backend.artifact in ("exported", "torchscript"):  # PyTorch serves fp16 (or fp8) on a GPU only
            self.result.precision = "fp8" if s.use_fp8 else "fp16" if s.use_fp16 and s.device == "cuda" else "fp32"
        half = self.result.precision in ("fp16", "fp8")
        if backend.artifact == "exported":
            fp8_layers = self.fp8_gate() if s.use_fp8 else None
            files[model_file] = export_program(self.model, s.io, s.plan, self.triton_inputs, self.sample, s.device,
                                               half, scratch / model_file, fp8_layers=fp8_layers)
        elif backend.artifact == "torchscript":
            # A trace records the device of the tensors it creates (position ids, YOLOX's grids): the
            # first GPU the instances drive gets `model.pt`, each further one its own `model.cuda<N>.pt`.
            devices = [f"cuda:{gpu}" for gpu in s.instances.gpus] if s.device == "cuda" and s.instances.gpus else [s.device]
            files[model_file] = _trace(self.model, self.triton_inputs, devices[0], self.sample, scratch, half=half)
            for device in devices[1:]:
                files[f"1/{traced_file_name(device)}"] = _trace(self.model, self.triton_inputs, device, self.sample,
                                                                scratch, half=half)
        elif backend.artifact == "onnx":
            files[model_file] = self.onnx_path
        if backend.runner is not None:
            files["1/model.py"], files[MODEL_SUPPORT_FILE] = backend.runner, MODEL_SUPPORT
        return files

    def fp8_gate(self) -> list[str]:
        """fp32, fp16 and fp8 on the golden batch and 64 random rows: the layers to publish in FP8
        (every quantisable one, or the kinds that hold the bounds: fp8.choose_fp8_layers); where no
        kind holds, nothing is published."""
        s = self.settings
        batches = export_step.gate_batches(s.io, s.plan)
        choice = choose_for_model(self.model, batches, self.triton_inputs, s.io.output_names, s.device)
        self.result.say("fp8 against fp32 (fp16 beside it):\n" + choice.report())
        self.result.accuracy = choice.as_manifest()
        fp8_gate(s.model_name, choice.accuracy, choice.kept)  # the chosen layers' accuracy holds; none chosen: refused
        return choice.layers

    def publish(self, files: dict[str, Path | bytes | str]) -> None:
        s, backend, precision = self.settings, self.backend, self.result.precision
        instances, parameters = placement(s, backend, precision)
        config = build_config(TritonModelConfig(
            name=s.model_name, serve_backend=backend.name, io=s.io, triton_inputs=self.triton_inputs, plan=s.plan,
            dynamic_batching=s.dynamic_batching, max_queue_delay_us=s.max_queue_delay_us,
            # On GPUs every instance runs a warm-up request at load: an instance that cannot run on its
            # GPU fails the load with its reason, where golden verification reaches only one instance.
            instances=instances, warmup=s.warmup or (backend.runner_parameters and s.device == "cuda"),
            parameters=parameters, cc_model_filenames=cc_model_filenames(self.targets) if backend.engine else {}))
        profiles = s.plan.profiles(s.io)
        check_config_fits_profile(config, profiles)
        if backend.artifact == "exported":  # compile every bucket now: the cache is published, the server loads it
            compiled = warm_and_check(files[f"1/{backend.model_file}"], config, parameters, s.io, s.plan,
                                      self.triton_inputs, s.device, TOLERANCES[precision])
            files = {**files, "1/compile_cache": compiled.cache}
            self.result.timings["compile"] = compiled.seconds
            self.result.say(f"compiled {compiled.buckets} bucket shapes in {compiled.seconds:.1f} s; a padded batch "
                            f"against the exported program:\n{compiled.check.report()}")
        golden_inputs = export_step.golden_sample(s.io, s.plan)
        golden = Golden({k: v for k, v in golden_inputs.items() if k in self.triton_inputs},
                        export_step.run_torch(self.model, s.io, golden_inputs, s.device), TOLERANCES[precision])
        engine = self._engine_entry()
        manifest = Manifest(
            model=s.model_name, fingerprint=self.key, serve_backend=backend.name, precision=precision, demo=s.demo,
            sources=self.sources, versions=self.versions, gpu=self.gpu,
            source_paths={"checkpoint": str(s.ckpt_path), "script": str(s.model_script_path)},
            settings=s.manifest_settings(),
            profile={name: [list(shape) for shape in shapes] for name, shapes in profiles.items()},
            engine=engine, accuracy=self.result.accuracy)
        if self.model_dir.exists() and not s.overwrite and Manifest.read(self.model_dir) is not None:
            self.result.say(f"replacing {self.model_dir}: its manifest says it was built from other inputs or settings.")
        self.result.model_dir = publish(s.triton_repo, s.model_name, config_text(config), manifest, golden, files)
        self.result.say(f"published {self.result.model_dir} ({backend.name}, {precision})")


    def _engine_entry(self) -> dict | None:
        """Which TensorRT built what, for which GPU types (each file, built or kept), and whether it
        is what is served; None where this run built no engine."""
        built = [e.build for e in self.engines if e.build is not None]
        if not built:
            return None
        files = {e.target.compute_capability: {"path": str(e.target.engine_path), "file": e.target.model_file,
                                               "bytes": len(e.engine), "seconds": round(e.build.seconds, 2) if e.build else None}
                 for e in self.engines if e.target.compute_capability}
        return dict(built[0].manifest_entry(), path=str(self.settings.engine_path), compute_capabilities=self.engine_types,
                    engines=files, served=self.backend.artifact == "engine")


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


def placement(settings: ConversionSettings, backend: ServeBackend, precision: str) -> tuple[InstancePlan, dict[str, str]]:
    """The config's instance group and runner parameters. GPU instances go on `--instance-gpus`
    (every visible GPU where none is named); a runner's CPU instances that drive GPUs get `count`
    instances per GPU and the `devices` they take in turn."""
    parameters = {"precision": precision, "device": settings.device} if backend.runner_parameters else {}
    buckets = sequence_buckets(settings.io, settings.io.input_names, settings.pad_sequence)
    if backend.artifact == "exported" and buckets:
        parameters["sequence_buckets"] = buckets
    if settings.instances.kind != "auto":
        return settings.instances, parameters
    kind, gpus = backend.instance_kind(settings.device), settings.instances.gpus
    if kind == "KIND_GPU":
        return InstancePlan(settings.instances.count, kind, gpus), parameters
    if backend.runner_parameters and settings.device == "cuda" and gpus:
        parameters["devices"] = ",".join(f"cuda:{gpu}" for gpu in gpus)
        return InstancePlan(settings.instances.count * len(gpus), kind, ()), parameters
    return InstancePlan(settings.instances.count, kind, ()), parameters


def traced_file_name(device: str) -> str:
    """`model.cuda1.pt` for `cuda:1`: the trace of a further GPU (the first GPU's is `model.pt`)."""
    return f"model.{device.replace(':', '')}.pt"


def _trace(model: torch.nn.Module, inputs: tuple[str, ...], device: str, sample: dict, scratch: Path,
           half: bool = False) -> Path:
    """TorchScript of the model for the python_torch runner (traced on the check sample, taking
    the served inputs in the config's order), on `device`. fp16 is traced in fp16: tracing
    records dtypes, so a module traced in fp32 and cast afterwards would mix precisions."""
    import copy
    import warnings

    args = tuple(torch.from_numpy(sample[name]).to(device) for name in inputs)
    model = copy.deepcopy(model).to(device)
    if half:
        model = model.half()
        args = tuple(a.half() if a.is_floating_point() else a for a in args)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        traced = torch.jit.trace(model, args, check_trace=False, strict=False)
    path = scratch / traced_file_name(device)
    traced.save(str(path))
    return path
