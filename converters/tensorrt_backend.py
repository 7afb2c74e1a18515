"""The one thin module that calls TensorRT. Everything it is told comes from plain, tested
decisions elsewhere (profiles in `batching`, precision in `precision`, calibration batches in
`calibration`, the gate in `manifest`).

It runs against whichever TensorRT is installed, found lazily by `installed_tensorrt()`:
NVIDIA's TensorRT (`tensorrt`, or `tensorrt_bindings` where the bindings wheel alone sits on
the image's own libraries), else TensorRT for RTX (`tensorrt_rtx`), which builds engines on a
machine without a GPU and is always strongly typed. Every exception from the bindings becomes
one `UserError` naming the model and the step.
"""
from __future__ import annotations

import functools
import importlib
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.calibration import entropy_calibrator
from converters.errors import UserError
from converters.precision import LayerFacts, PrecisionPlan, select_fp32_layers

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]

# Import names, in the order they are tried. The first two are NVIDIA's TensorRT.
TENSORRT_MODULES = ("tensorrt", "tensorrt_bindings", "tensorrt_rtx")
# TensorRT for RTX runs engines on these GPUs only (its support matrix); 12.x is Blackwell.
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.6", "8.9")


@dataclass(frozen=True)
class TensorRTInstall:
    """Which TensorRT this process builds with, read from the imported module itself."""
    module: str
    version: str

    @property
    def rtx(self) -> bool:
        return self.module == "tensorrt_rtx"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 11 and TensorRT for RTX have no weak typing: precision lives in the ONNX."""
        return self.rtx or self.major >= 11

    @property
    def serves_triton(self) -> bool:
        """Its engines are `tensorrt_plan` models for NVIDIA's Triton (a TensorRT-RTX engine is not)."""
        return not self.rtx

    @property
    def label(self) -> str:
        return f"{'TensorRT for RTX' if self.rtx else 'TensorRT'} {self.version}"

    def can_run_engines(self, compute_capability: str | None) -> bool:
        """Deserializing and running an engine needs a GPU this TensorRT supports."""
        if compute_capability is None:
            return False
        if self.rtx:
            return compute_capability in RTX_COMPUTE_CAPABILITIES or compute_capability.startswith("12.")
        return True


@functools.cache
def installed_tensorrt() -> TensorRTInstall | None:
    for name in TENSORRT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return TensorRTInstall(name, str(module.__version__))
    return None


def _trt():
    install = installed_tensorrt()
    if install is None:
        raise UserError(
            "TensorRT is not installed here: run the build in the builder container on a GPU host "
            "(docker compose up), or serve the ONNX with --serve-backend python_onnx."
        )
    return importlib.import_module(install.module)


@dataclass(frozen=True)
class NetworkInput:
    name: str
    dtype: str  # numpy dtype name
    shape: Shape  # -1 where dynamic
    profile: Profile  # (min, opt, max) as set on the optimization profile


@dataclass(frozen=True)
class EngineRequest:
    model_name: str  # for messages
    onnx_path: Path
    profiles: dict[str, Profile]
    plan: PrecisionPlan
    memory_pool_limit: int
    timing_cache_path: Path
    fp32_nodes: frozenset[str] = frozenset()  # ONNX nodes kept in fp32 (weak typing only)
    calibration_batches: tuple[dict[str, np.ndarray], ...] = ()
    calibration_cache_path: Path | None = None
    compute_capability: str | None = None  # TensorRT for RTX: the GPU type to build for
    device: int | None = None  # NVIDIA's TensorRT: the visible GPU to build on (it builds for that GPU's type)


@dataclass(frozen=True)
class EngineBuild:
    """What one build made, read from TensorRT's own objects."""
    engine: bytes
    tensorrt: TensorRTInstall
    precision: str  # the plan's: fp32 | fp16 | int8
    strongly_typed: bool
    inputs: tuple[NetworkInput, ...]
    outputs: dict[str, str]  # name -> numpy dtype name
    layer_output_dtypes: dict[str, int]  # DataType name -> how many layer outputs have it
    fp32_pinned_layers: int
    seconds: float
    compute_capability: str | None = None  # the GPU type it was built for, where one was named

    def manifest_entry(self) -> dict:
        return {"tensorrt": self.tensorrt.label, "module": self.tensorrt.module, "precision": self.precision,
                "compute_capability": self.compute_capability,
                "strongly_typed": self.strongly_typed, "bytes": len(self.engine), "seconds": round(self.seconds, 2),
                "layer_output_dtypes": self.layer_output_dtypes, "fp32_pinned_layers": self.fp32_pinned_layers,
                "inputs": {i.name: {"dtype": i.dtype, "shape": list(i.shape), "profile": [list(s) for s in i.profile]}
                           for i in self.inputs},
                "outputs": self.outputs}


@functools.cache
def _logger(trt):
    """One logger per process: TensorRT keeps the first it is given and ignores later ones."""
    without_gpu = trt.__name__ == "tensorrt_rtx"  # its CPU-only builds log CUDA errors that mean nothing

    class Logger(trt.ILogger):
        """Forwards TensorRT's messages to logging and keeps its errors for the one-line message."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []  # the latest few
            self.count = 0  # errors seen in all

        def log(self, severity, msg) -> None:  # never raises: TensorRT calls it from C++
            try:
                if without_gpu and "Cuda Runtime" in str(msg):  # TensorRT for RTX probing for a GPU: expected
                    log.debug("TensorRT: %s", msg)
                elif int(severity) <= int(trt.ILogger.Severity.ERROR):
                    self.errors = self.errors[-9:] + [str(msg)]
                    self.count += 1
                    log.error("TensorRT: %s", msg)
                elif int(severity) == int(trt.ILogger.Severity.WARNING):
                    log.warning("TensorRT: %s", msg)
            except Exception:  # noqa: BLE001
                pass

    return Logger()


@contextmanager
def _step(model_name: str, step: str, logger):
    """A binding exception becomes one line naming the model and the step, not a traceback."""
    seen = logger.count
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # anything the bindings raise
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        last = f" (TensorRT said: {logger.errors[-1][:300]})" if logger.count > seen else ""
        raise UserError(f"TensorRT failed to {step} for model '{model_name}': {detail}{last}") from exc


# numpy has no bf16 or fp8: their torch (and ml_dtypes) names, and run_engine makes torch tensors of them.
# TensorRT's FP8 is E4M3 with exponent bias 7 (the DataType docstring): float8_e4m3fn.
NON_NUMPY_DTYPES = {"BF16": "bfloat16", "FP8": "float8_e4m3fn"}


def _dtype_name(trt, dtype, tensor: str, model_name: str) -> str:
    """The numpy name of an IO tensor's dtype (`trt.nptype` raises for bf16, fp8 and the 4-bit types)."""
    if dtype.name in NON_NUMPY_DTYPES:
        return NON_NUMPY_DTYPES[dtype.name]
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:
        raise UserError(f"the tensor '{tensor}' of model '{model_name}' has the TensorRT dtype {dtype.name}, which "
                        "no host array holds; give the graph's inputs and outputs another dtype.") from None


def _host_tensor(feed: np.ndarray, dtype_name: str):
    """The feed as a torch tensor of the engine's dtype (bf16 and fp8 have no numpy type to cast to)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(feed)).to(getattr(torch, dtype_name))


def _set_precision(trt, config, plan: PrecisionPlan) -> None:
    """The plan's flags; for fp32 TF32 cleared: TensorRT sets it by default, and Ampere and newer would
    then run matmuls and convolutions in TF32 under fp32's name and tolerances (TensorRT for RTX has it too)."""
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)


def _parse(trt, builder, logger, onnx_path: Path, strongly_typed: bool, model_name: str):
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT >= 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            node = error.node_name() if hasattr(error, "node_name") else error.node()
            op = f" ({error.node_operator()})" if hasattr(error, "node_operator") else ""
            problems.append(f"node {node}{op}: {error.desc()}")
        raise UserError(f"TensorRT cannot parse {onnx_path} for model '{model_name}': " + "; ".join(problems[:5])
                        + "; fix the exporter so this graph uses operators TensorRT supports.")
    return network, parser  # the parser owns the weights: keep it alive with the network


def _layer_facts(trt, network) -> list[LayerFacts]:
    facts = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        dtypes = tuple(layer.get_output(j).dtype.name for j in range(layer.num_outputs))
        facts.append(LayerFacts(i, layer.name, layer.type.name, getattr(layer, "metadata", "") or "", dtypes))
    return facts


def network_layers(onnx_path: Path, model_name: str) -> list[LayerFacts]:
    """Parse the ONNX and describe its layers (what the fp32 pinning decides on), for checks."""
    trt = _trt()
    logger = _logger(trt)
    with _step(model_name, "parse the ONNX", logger):
        builder = trt.Builder(logger)
        network, _parser = _parse(trt, builder, logger, onnx_path, installed_tensorrt().strongly_typed, model_name)
        return _layer_facts(trt, network)


@contextmanager
def _on_device(device: int | None):
    """NVIDIA's TensorRT builds and runs on the current CUDA device: make it `device`."""
    if device is None:
        yield
        return
    import torch

    with torch.cuda.device(device):
        yield


def _set_build_type(trt, config, compute_capability: str | None, install: TensorRTInstall) -> None:
    """TensorRT for RTX builds for the type it is told (no GPU needed)."""
    if compute_capability is None or not install.rtx:
        return
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + compute_capability.replace(".", "")), 0)


def build_engine(request: EngineRequest) -> EngineBuild:
    with _on_device(request.device):
        return _build_engine(request)


def _build_engine(request: EngineRequest) -> EngineBuild:
    trt = _trt()
    install = installed_tensorrt()
    plan, name = request.plan, request.model_name
    logger = _logger(trt)
    with _step(name, "parse the ONNX", logger):
        builder = trt.Builder(logger)
        network, _parser = _parse(trt, builder, logger, request.onnx_path, plan.strongly_typed, name)

    pinned = 0
    with _step(name, "configure the build", logger):
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.memory_pool_limit)
        _set_build_type(trt, config, request.compute_capability, install)
        _set_precision(trt, config, plan)
        if plan.builder_flags and not plan.strongly_typed:
            pinned = _pin_fp32_layers(trt, network, request.fp32_nodes)
        profile = builder.create_optimization_profile()
        inputs = []
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if tensor.name not in request.profiles:
                raise UserError(f"the ONNX input '{tensor.name}' of model '{name}' has no entry in --model-io-config; "
                                "add it there.")
            profile.set_shape(tensor.name, *request.profiles[tensor.name])
            read_back = tuple(tuple(s) for s in profile.get_shape(tensor.name))
            dtype = _dtype_name(trt, tensor.dtype, tensor.name, name)
            inputs.append(NetworkInput(tensor.name, dtype, tuple(tensor.shape), read_back))
        outputs = {t.name: _dtype_name(trt, t.dtype, t.name, name) for t in map(network.get_output,
                                                                                   range(network.num_outputs))}
        if not profile:  # an optimization profile converts to False when its shapes are inconsistent
            said = f" (TensorRT said: {logger.errors[-1][:300]})" if logger.errors else ""
            raise UserError(f"the optimization profile of model '{name}' is not valid: {request.profiles}{said}.")
        config.add_optimization_profile(profile)
        if plan.int8_source in ("calibration-data", "calibration-cache"):
            config.int8_calibrator = entropy_calibrator(trt, request.calibration_batches, request.calibration_cache_path)
            config.set_calibration_profile(profile)
        if not install.rtx:  # TensorRT for RTX accepts a timing cache and ignores it
            cache_bytes = request.timing_cache_path.read_bytes() if request.timing_cache_path.is_file() else b""
            config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=True)

    started = time.perf_counter()
    log.info("building the %s engine of %s for %s (this takes minutes for large models on a GPU)", install.label, name,
             f"compute capability {request.compute_capability}" if request.compute_capability else "this GPU")
    errors_before = logger.count
    with _step(name, "build the engine", logger):
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            said = f": {logger.errors[-1][:300]}" if logger.count > errors_before else "; see the TensorRT log above"
            raise UserError(f"TensorRT failed to build an engine from {request.onnx_path} for model '{name}'{said}.")
        engine = bytes(memoryview(serialized))
    seconds = time.perf_counter() - started
    log.info("engine built in %.1f s (%.1f MB)", seconds, len(engine) / 1e6)
    if not install.rtx:
        with _step(name, "save the timing cache", logger):
            _write_atomically(request.timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    dtypes: dict[str, int] = {}
    for layer in _layer_facts(trt, network):
        for dtype in layer.output_dtypes:
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
    return EngineBuild(engine, install, plan.precision, plan.strongly_typed, tuple(inputs), outputs, dtypes, pinned,
                       seconds, request.compute_capability)


def _write_atomically(path: Path, data: bytes) -> None:
    from converters.publish import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def _pin_fp32_layers(trt, network, fp32_nodes: frozenset[str]) -> int:
    """Weak typing (TensorRT 10): the layers `select_fp32_layers` chose compute and output fp32."""
    chosen = select_fp32_layers(_layer_facts(trt, network), fp32_nodes)
    for index in chosen:
        layer = network.get_layer(index)
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
    return len(chosen)


def _deserialize(trt, engine: bytes, model_name: str, logger):
    runtime = trt.Runtime(logger)
    cuda_engine = runtime.deserialize_cuda_engine(engine)
    if cuda_engine is None:
        raise UserError(f"the engine of model '{model_name}' does not deserialize with this TensorRT and GPU; "
                        "rebuild it here.")
    return runtime, cuda_engine


def inspect_engine(engine: bytes, model_name: str, device: int | None = None
                   ) -> tuple[dict[str, tuple[str, Profile]], dict[str, str]]:
    """Read back the built engine's inputs (dtype, profile 0) and outputs (dtype), on `device`."""
    trt = _trt()
    logger = _logger(trt)
    with _on_device(device), _step(model_name, "read the engine back", logger):
        _runtime, cuda_engine = _deserialize(trt, engine, model_name, logger)
        inputs, outputs = {}, {}
        for i in range(cuda_engine.num_io_tensors):
            name = cuda_engine.get_tensor_name(i)
            dtype = _dtype_name(trt, cuda_engine.get_tensor_dtype(name), name, model_name)
            if cuda_engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                low, opt, high = cuda_engine.get_tensor_profile_shape(name, 0)
                inputs[name] = (dtype, (tuple(low), tuple(opt), tuple(high)))
            else:
                outputs[name] = dtype
        return inputs, outputs


def run_engine(engine: bytes, feeds: dict[str, np.ndarray], model_name: str, device: int | None = None
               ) -> dict[str, np.ndarray]:
    """Run the engine once on the GPU `device` (torch tensors as buffers) for the post-build check."""
    import torch

    trt = _trt()
    logger = _logger(trt)
    with _on_device(device), _step(model_name, "run the engine on the check sample", logger):
        _runtime, cuda_engine = _deserialize(trt, engine, model_name, logger)
        context = cuda_engine.create_execution_context()
        keep, outputs = [], {}
        names = [cuda_engine.get_tensor_name(i) for i in range(cuda_engine.num_io_tensors)]
        dtypes = {name: _dtype_name(trt, cuda_engine.get_tensor_dtype(name), name, model_name) for name in names}
        for name in names:
            if cuda_engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                tensor = _host_tensor(feeds[name], dtypes[name]).cuda()
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
        for name in names:
            if cuda_engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                tensor = torch.empty(tuple(context.get_tensor_shape(name)), dtype=getattr(torch, dtypes[name])).cuda()
                context.set_tensor_address(name, tensor.data_ptr())
                outputs[name] = tensor
        stream = torch.cuda.Stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise UserError(f"the TensorRT engine of model '{model_name}' failed to run on the check sample.")
        stream.synchronize()
        return {name: t.float().cpu().numpy() for name, t in outputs.items()}
