"""Step 1: PyTorch -> ONNX (opset 17, batch axis dynamic on every tensor)."""
from __future__ import annotations

import contextlib

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from converters.batching import BatchPlan
from converters.errors import UserError
from converters.io_config import IOConfig, TensorSpec
from converters.publish import atomic_output

DEFAULT_OPSET = 17  # LayerNormalization is a single op from 17: TensorRT maps it to one fp32-capable layer


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    graph_inputs: tuple[str, ...]  # the inputs the exported graph really uses
    seconds: float


GOLDEN_BATCH = 2  # rows of the golden sample (seed 1) a build checks its published model with


def make_sample(io: IOConfig, plan: BatchPlan, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs at the opt shape (or at `batch`)."""
    rng = np.random.default_rng(seed)
    return {spec.name: _random_tensor(spec, plan.sample_shape(spec, batch), rng) for spec in io.inputs}


def _random_tensor(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = spec.numpy_dtype
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        low, high = spec.value_range or (0, 100)
        return rng.integers(int(low), int(high), size=shape).astype(dtype)
    low, high = spec.value_range or (0.0, 1.0)
    return rng.uniform(low, high, size=shape).astype(dtype)


def run_torch(model: torch.nn.Module, io: IOConfig, feeds: dict[str, np.ndarray], device: str = "cpu") -> dict[str, np.ndarray]:
    """Run the model on numpy feeds (inputs in IO-config order) and name its outputs. In IEEE fp32:
    PyTorch's default TF32 convolutions on a GPU keep 10 mantissa bits, which moved YOLOX's decoded
    pixel boxes by 0.4 px, past the fp32 tolerance of the checks this reference serves."""
    args = tuple(torch.from_numpy(feeds[name]).to(device) for name in io.input_names)
    with ieee_fp32_matmuls(), torch.inference_mode(), torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        result = model(*args)
    return name_outputs(result, io)


@contextlib.contextmanager
def ieee_fp32_matmuls():
    """fp32 matmuls in IEEE fp32 inside, the process's own setting restored exactly after. Restoring
    through the old `allow_tf32` flag would leave `fp32_precision` at "ieee" where it was "none"; that
    setting is part of Inductor's cache key, so every later compile in the builder (the cache it
    publishes) would miss in the server, which compiles everything again at load."""
    matmul = torch.backends.cuda.matmul
    # torch without fp32_precision, or TF32 set through the old flag (the new setting alone would
    # leave the two disagreeing, and reading the old flag would raise): the old flag, both ways
    if not hasattr(matmul, "fp32_precision") or matmul.fp32_precision == "tf32":
        before, matmul.allow_tf32 = matmul.allow_tf32, False
        try:
            yield
        finally:
            matmul.allow_tf32 = before
        return
    before, matmul.fp32_precision = matmul.fp32_precision, "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def golden_sample(io: IOConfig, plan: BatchPlan) -> dict[str, np.ndarray]:
    """The inputs a build checks its published model with (and the fp8 gate's first batch)."""
    return make_sample(io, plan, batch=min(GOLDEN_BATCH, plan.max_batch_size), seed=1)


def gate_batches(io: IOConfig, plan: BatchPlan) -> list[dict[str, np.ndarray]]:
    """The fp8 gate's inputs: the golden sample and 64 random rows in batches of up to 8."""
    rows = min(8, plan.max_batch_size)
    return [golden_sample(io, plan)] + [make_sample(io, plan, batch=rows, seed=100 + i) for i in range(-(-64 // rows))]


def run_as_served(model: torch.nn.Module, io: IOConfig, feeds: dict[str, np.ndarray], device: str,
                  precision: str, fp8_layers: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run the model as the python_torch runner serves it: fp16 on CUDA (float inputs cast) when the
    precision is fp16 and a GPU is there (fp8: `fp8_layers` in FP8, as the build's gate chose; None:
    every quantisable layer), else fp32. Golden answers with a discrete part (a chosen caption, a set
    of boxes) come from here: in fp16 a near-tie can flip, not just move a value."""
    target = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    model = model.to(target)
    if target == "cuda" and precision in ("fp16", "fp8"):
        model = model.half()
        if precision == "fp8":
            from converters.fp8 import quantise_linear_layers

            quantise_linear_layers(model, names=fp8_layers)
        feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}
    return run_torch(model, io, feeds, target)


def name_outputs(result: object, io: IOConfig) -> dict[str, np.ndarray]:
    if isinstance(result, torch.Tensor):
        values = [result]
    elif isinstance(result, dict):
        values = [result[name] for name in io.output_names if name in result] or list(result.values())
    elif isinstance(result, (tuple, list)):
        values = list(result)
    else:
        raise UserError(f"the model returned {type(result).__name__}; return a tensor, a tuple of tensors or a dict.")
    if len(values) != len(io.outputs):
        raise UserError(
            f"the model returned {len(values)} output(s) but --model-io-config lists {len(io.outputs)} "
            f"({', '.join(io.output_names)})."
        )
    return {name: value.detach().float().cpu().numpy() if value.dtype in (torch.float16, torch.bfloat16)
            else value.detach().cpu().numpy() for name, value in zip(io.output_names, values)}


def export_onnx(model: torch.nn.Module, io: IOConfig, plan: BatchPlan, onnx_path: Path,
                device: str = "cpu", opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export with the batch axis (and every -1 dimension) dynamic; written atomically."""
    sample = make_sample(io, plan)
    args = tuple(torch.from_numpy(sample[name]).to(device) for name in io.input_names)
    dynamic_axes = {}
    for spec in io.inputs + io.outputs:
        axes = {0: "batch"}
        axes.update({i + 1: f"{spec.name}_dim{i + 1}" for i, d in enumerate(spec.shape) if d == -1})
        dynamic_axes[spec.name] = axes
    started = time.perf_counter()
    with atomic_output(Path(onnx_path)) as tmp_path, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer chatter
        try:
            torch.onnx.export(
                model, args, str(tmp_path), input_names=io.input_names, output_names=io.output_names,
                dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        except Exception as exc:
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"ONNX export of --model-class-name failed with the --model-io-config inputs ({message}); "
                "check that forward() takes the inputs in that order with those dtypes and shapes."
            ) from exc
        graph = onnx.load(str(tmp_path), load_external_data=False)
    graph_inputs = tuple(i.name for i in graph.graph.input)
    return ExportResult(Path(onnx_path), graph_inputs, time.perf_counter() - started)


def onnx_graph_inputs(onnx_path: Path) -> tuple[str, ...]:
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return tuple(i.name for i in model.graph.input if i.name not in initializers)


def has_qdq_nodes(onnx_path: Path) -> bool:
    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def convert_to_fp16(onnx_path: Path, out_path: Path, keep_fp32_ops: tuple[str, ...]) -> Path:
    """An fp16 ONNX for strongly typed TensorRT: fp16 weights and casts, normalisation and the
    kept ops in fp32, fp32 inputs and outputs so the served contract does not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # handles Cast/Identity chains

    from converters.precision import fp32_onnx_nodes

    model = onnx.load(str(onnx_path))
    kept_nodes = sorted(fp32_onnx_nodes(model.graph.node, keep_fp32_ops))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "number truncated to fp16 range" for -inf masks, expected
        converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(keep_fp32_ops),
                                             node_block_list=kept_nodes)
    with atomic_output(Path(out_path)) as tmp_path:
        onnx.save(converted, str(tmp_path))
    return Path(out_path)
