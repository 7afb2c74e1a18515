"""The one thin module that calls TensorRT. Everything it is told comes from plain, tested
decisions elsewhere (profiles in `batching`, precision in `precision`, the gate in `manifest`).

TensorRT cannot be installed on the development and CI machines; this module is imported
lazily and only where an engine is built, inspected or run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.errors import UserError
from converters.precision import PrecisionPlan

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None where it is absent."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return trt.__version__


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError(
            "TensorRT is not installed here: run the build in the builder container on a GPU host "
            "(docker compose up), or serve the ONNX with --serve-backend python_onnx."
        ) from None
    return trt


@dataclass(frozen=True)
class EngineInfo:
    inputs: dict[str, tuple[str, tuple[Shape, Shape, Shape]]]  # name -> (numpy dtype name, (min, opt, max))
    outputs: dict[str, str]  # name -> numpy dtype name


def build_engine(onnx_path: Path, profiles: dict[str, tuple[Shape, Shape, Shape]], plan: PrecisionPlan,
                 memory_pool_limit: int, timing_cache_path: Path,
                 calibration_batches: list[dict[str, np.ndarray]] | None = None,
                 calibration_cache_path: Path | None = None) -> bytes:
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed:
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
            problems.append(f"node {node}: {error.desc()}")
        raise UserError(f"TensorRT cannot parse {onnx_path}: " + "; ".join(problems[:5]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, memory_pool_limit)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.fp32_layer_types and not plan.strongly_typed:
        _pin_fp32_layers(trt, network, plan.fp32_layer_types)

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profiles:
            raise UserError(f"the ONNX input '{name}' has no entry in --model-io-config; add it there.")
        profile.set_shape(name, *profiles[name])
    config.add_optimization_profile(profile)

    if plan.int8_source in ("calibration-data", "calibration-cache"):
        config.int8_calibrator = _make_calibrator(trt, calibration_batches or [], calibration_cache_path)
        config.set_calibration_profile(profile)

    cache_bytes = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)

    started = time.perf_counter()
    log.info("building the TensorRT engine (this takes minutes for large models)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above.")
    log.info("engine built in %.1f s", time.perf_counter() - started)
    timing_cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _pin_fp32_layers(trt, network, onnx_op_types: tuple[str, ...]) -> None:
    """Weak typing (TensorRT 10): keep normalisation/softmax-class layers in fp32."""
    pinned_types = {trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    if hasattr(trt.LayerType, "NORMALIZATION"):
        pinned_types.add(trt.LayerType.NORMALIZATION)
    markers = tuple(op.lower() for op in onnx_op_types)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in pinned_types or any(m in layer.name.lower() for m in markers):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def _make_calibrator(trt, batches: list[dict[str, np.ndarray]], cache_path: Path | None):
    import torch  # device buffers for the calibrator

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = iter(batches)
            self._keep: list = []

        def get_batch_size(self) -> int:
            return next(iter(batches[0].values())).shape[0] if batches else 1

        def get_batch(self, names):
            feed = next(self._batches, None)
            if feed is None:
                return None
            self._keep = [torch.from_numpy(feed[name]).cuda() for name in names]
            return [t.data_ptr() for t in self._keep]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path and cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            if cache_path:
                cache_path.write_bytes(bytes(cache))

    return Calibrator()


def inspect_engine(engine: bytes) -> EngineInfo:
    """Read back the built engine's I/O names, dtypes and profile."""
    trt = _trt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    cuda_engine = runtime.deserialize_cuda_engine(engine)
    if cuda_engine is None:
        raise UserError("the engine does not deserialize with this TensorRT and GPU; rebuild it here.")
    inputs, outputs = {}, {}
    for i in range(cuda_engine.num_io_tensors):
        name = cuda_engine.get_tensor_name(i)
        dtype = np.dtype(trt.nptype(cuda_engine.get_tensor_dtype(name))).name
        if cuda_engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            low, opt, high = cuda_engine.get_tensor_profile_shape(name, 0)
            inputs[name] = (dtype, (tuple(low), tuple(opt), tuple(high)))
        else:
            outputs[name] = dtype
    return EngineInfo(inputs, outputs)


def run_engine(engine: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the engine once on the GPU (torch tensors as buffers) for the post-build check."""
    import torch

    trt = _trt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    cuda_engine = runtime.deserialize_cuda_engine(engine)
    context = cuda_engine.create_execution_context()
    keep, outputs = [], {}
    for i in range(cuda_engine.num_io_tensors):
        name = cuda_engine.get_tensor_name(i)
        if cuda_engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            dtype = np.dtype(trt.nptype(cuda_engine.get_tensor_dtype(name)))
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name].astype(dtype))).cuda()
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
    for i in range(cuda_engine.num_io_tensors):
        name = cuda_engine.get_tensor_name(i)
        if cuda_engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = np.dtype(trt.nptype(cuda_engine.get_tensor_dtype(name)))
            tensor = torch.empty(tuple(context.get_tensor_shape(name)), dtype=getattr(torch, dtype.name)).cuda()
            context.set_tensor_address(name, tensor.data_ptr())
            outputs[name] = tensor
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise UserError("the TensorRT engine failed to run on the check sample.")
    stream.synchronize()
    return {name: t.float().cpu().numpy() for name, t in outputs.items()}
