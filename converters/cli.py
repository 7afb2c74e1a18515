"""Command line of the conversion tool: every flag of the original, with its meaning."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from converters.batching import BatchPlan
from converters.engine_targets import parse_gpu_types
from converters.errors import ArgumentParser, UserError
from converters.io_config import parse_io_config
from converters.conversion_settings import ConversionSettings, parse_int_list, parse_size
from converters.serve_backends import CORE_SERVE_BACKENDS
from converters.triton_config import InstancePlan


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "") else int(text)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m converters",
        description="PyTorch checkpoint -> ONNX -> TensorRT engine, plus a Triton config.pbtxt.")
    req = p.add_argument_group("required")
    req.add_argument("--ckpt-path", required=True, type=Path, help="state_dict checkpoint (torch.save(model.state_dict()))")
    req.add_argument("--engine-path", required=True, type=Path, help="where the TensorRT engine is written")
    req.add_argument("--model-class-name", required=True, help="the torch.nn.Module class in --model-script-path")
    req.add_argument("--model-name", required=True, help="the Triton model name (exactly this, no suffix)")
    req.add_argument("--model-script-path", required=True, type=Path, help="Python file defining the model class")
    req.add_argument("--onnx-path", required=True, type=Path, help="where the ONNX model is written / read")
    req.add_argument("--triton-repo", required=True, type=Path, help="the Triton model repository to publish into")
    req.add_argument("--model-io-config", required=True,
                     help='JSON {"inputs": [{"name","dtype","shape"}], "outputs": [...]}; shapes exclude the batch, -1 is dynamic')

    steps = p.add_argument_group("steps")
    steps.add_argument("--generate-onnx", action="store_true", help="export the ONNX model")
    steps.add_argument("--generate-trt", action="store_true", help="build the TensorRT engine (from --onnx-path)")
    steps.add_argument("--generate-triton-config", action="store_true", help="publish config.pbtxt and the model")
    steps.add_argument("--overwrite", action="store_true", help="replace existing outputs (atomically)")
    steps.add_argument("--force", action="store_true", help="rebuild even when the manifest says the model is current")

    batch = p.add_argument_group("batching")
    batch.add_argument("--input-size", nargs=2, type=_optional_int, default=[None, 128], metavar=("B", "L"),
                       help="batch and sequence length of the export sample and the engine's opt shape "
                            "(default: None 128; a missing batch means --max-batch-size)")
    batch.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size and engine profile max (default 8)")
    batch.add_argument("--preferred-batch-sizes", default=None,
                       help="comma list (default: powers of two from 1 to --max-batch-size)")
    batch.add_argument("--dynamic-batching", action="store_true", help="enable Triton dynamic batching")
    batch.add_argument("--max-queue-delay", type=int, default=100, help="dynamic batching queue delay in microseconds (default 100)")

    build = p.add_argument_group("build")
    build.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device the PyTorch model runs on (default cpu)")
    build.add_argument("--memory-pool-limit", default=str(1 << 30),
                       help="TensorRT workspace in bytes; '1 << 32' and '4GiB' forms accepted (default 1 << 30)")
    build.add_argument("--use-fp16", action="store_true", help="fp16 engine; LayerNorm/Softmax-class ops stay fp32")
    build.add_argument("--use-fp8", action="store_true",
                       help="python_compiled only: e4m3 weights and activations in the compiled program, on GPUs of "
                            "compute capability 8.9+ (Ada, Hopper); refused elsewhere; an accuracy gate against fp32 "
                            "decides whether it is published")
    build.add_argument("--use-int8", action="store_true", help="int8 engine; needs --calibration-data/--calibration-cache or Q/DQ nodes")
    build.add_argument("--calibration-data", type=Path, help=".npz with one array per input (batch first) for int8 calibration")
    build.add_argument("--calibration-cache", type=Path, help="int8 calibration cache to read (and write)")
    build.add_argument("--gpu-types", default=None, metavar="CC[,CC]",
                       help="compute capabilities to build one engine each for, e.g. 8.0,9.0 (default: one per type "
                            "of the visible GPUs); the first is written at --engine-path")
    build.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    build.add_argument("--accept-check-failure", action="store_true", help="publish even if outputs differ from PyTorch beyond tolerance")

    serve = p.add_argument_group("serving")
    serve.add_argument("--triton-inputs", default=None, help="comma list of the inputs the Triton config lists (default: the graph's)")
    serve.add_argument("--serve-backend", choices=("auto",) + CORE_SERVE_BACKENDS, default="auto",
                       help="auto: the engine where TensorRT is installed, else the python_onnx runner; "
                            "python_compiled: torch.compile with CUDA graphs per bucket (GPU hosts without TensorRT)")
    serve.add_argument("--pad-sequence", action="store_true",
                       help="python_compiled: zeros on the -1 axes change no answer (a token mask), so they are "
                            "padded to buckets and served from CUDA graphs")
    serve.add_argument("--instance-count", type=int, default=1, help="model instances per device (default 1)")
    serve.add_argument("--instance-kind", choices=("auto", "KIND_GPU", "KIND_CPU"), default="auto")
    serve.add_argument("--instance-gpus", default=None, help="comma list of GPU ids for the instance group")
    serve.add_argument("--warmup", action="store_true", help="add a model_warmup entry to the config")
    serve.add_argument("--demo", action="store_true", help="label the published model as built from a demo checkpoint")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p


def settings_from_args(args: argparse.Namespace) -> ConversionSettings:
    io = parse_io_config(args.model_io_config)
    preferred = parse_int_list(args.preferred_batch_sizes, "--preferred-batch-sizes") if args.preferred_batch_sizes else None
    plan = BatchPlan.create(args.max_batch_size, (args.input_size[0], args.input_size[1]), preferred)
    gpus = parse_int_list(args.instance_gpus, "--instance-gpus") if args.instance_gpus else ()
    triton_inputs = tuple(n for n in args.triton_inputs.replace(" ", "").split(",") if n) if args.triton_inputs else None
    return ConversionSettings(
        ckpt_path=args.ckpt_path, model_script_path=args.model_script_path, model_class_name=args.model_class_name,
        model_name=args.model_name, io=io, plan=plan, onnx_path=args.onnx_path, engine_path=args.engine_path,
        triton_repo=args.triton_repo, triton_inputs=triton_inputs, device=args.device,
        generate_onnx=args.generate_onnx, generate_trt=args.generate_trt,
        generate_triton_config=args.generate_triton_config, overwrite=args.overwrite, force=args.force,
        dynamic_batching=args.dynamic_batching, max_queue_delay_us=args.max_queue_delay,
        memory_pool_limit=parse_size(args.memory_pool_limit), use_fp16=args.use_fp16 or args.use_fp8,
        use_int8=args.use_int8, use_fp8=args.use_fp8,
        calibration_data=args.calibration_data, calibration_cache=args.calibration_cache,
        serve_backend=args.serve_backend, instances=InstancePlan(args.instance_count, args.instance_kind, gpus),
        warmup=args.warmup, opset=args.opset, accept_check_failure=args.accept_check_failure, demo=args.demo,
        pad_sequence=args.pad_sequence, gpu_types=parse_gpu_types(args.gpu_types))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="[converters] %(message)s")
    from converters.pipeline import convert  # heavy imports (torch) only once the flags are valid

    try:
        settings = settings_from_args(args)
        convert(settings)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

