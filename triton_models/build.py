"""`python -m triton_models.build MODEL`: build one model into a Triton model repository.

Without --checkpoint a demo checkpoint of the real architecture is made (random weights; real
MiniLM weights for E5) and everything published is labelled demo.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from converters.engine_targets import parse_gpu_types
from converters.errors import ArgumentParser, UserError
from converters.model_folder import MANIFEST_FILE
from converters.conversion_settings import parse_int_list
from converters.serve_backends import CORE_SERVE_BACKENDS
from triton_models.common import BuildOptions
from triton_models.registry import MODELS, get


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m triton_models.build", description=__doc__)
    p.add_argument("model", choices=[m.key for m in MODELS])
    p.add_argument("--checkpoint", type=Path, help="the model's checkpoint (file or folder); default: a demo checkpoint")
    p.add_argument("--repo", type=Path, default=Path("build/model_repository"), help="Triton model repository")
    p.add_argument("--work-dir", type=Path, default=Path("build/work"), help="ONNX, engines, demo checkpoints")
    p.add_argument("--max-batch-size", type=int, help="default: the registry's batch size for the model")
    p.add_argument("--precision", choices=("fp16", "fp32", "fp8"), default="fp16",
                   help="fp8: the transformer cores with --serve-backend python_compiled on GPUs of compute capability "
                        "8.9+ (the rest build in fp16)")
    p.add_argument("--serve-backend", choices=("auto",) + CORE_SERVE_BACKENDS, default="auto")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--gpus", default=None, help="comma list of GPU ids for the instance group")
    p.add_argument("--gpu-types", default=None, metavar="CC[,CC]",
                   help="engines: compute capabilities to build one each for (default: one per visible GPU type)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="model-specific option")
    p.add_argument("--force", action="store_true", help="rebuild even when current")
    return p


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    spec = get(args.model)
    extra = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--option {item} must be KEY=VALUE.")
        if key not in spec.builder.OPTIONS:  # a misspelt option would otherwise change nothing, silently
            known = ", ".join(f"{k} ({v})" for k, v in spec.builder.OPTIONS.items()) or "none"
            raise UserError(f"--option {key} is not an option of {spec.key}; its options: {known}.")
        extra[key] = value
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise UserError(f"--max-batch-size must be at least 1, got {args.max_batch_size}.")
    demo = args.checkpoint is None
    options = BuildOptions(
        checkpoint=args.checkpoint, repo=args.repo, work_dir=args.work_dir,
        max_batch_size=args.max_batch_size or spec.default_batch_size, precision=args.precision,
        serve_backend=args.serve_backend, device=args.device, instance_count=args.instance_count,
        gpus=parse_int_list(args.gpus, "--gpus") if args.gpus else (), gpu_types=parse_gpu_types(args.gpu_types),
        force=args.force, demo=demo, extra=extra)
    spec.builder.read_options(options)  # every option's value, as the build reads it, before any work
    if demo:  # made only once the flags are known to be good
        return replace(options, checkpoint=spec.builder.make_demo_checkpoint(args.work_dir / "demo_checkpoints"))
    if not args.checkpoint.exists():
        raise UserError(f"--checkpoint {args.checkpoint} does not exist.")
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[build {args.model}] %(message)s")
    try:
        options = options_from_args(args)
        before = {name: built_at(options.repo / name) for name in get(args.model).triton_names}
        folders = get(args.model).builder.build(options)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for folder in folders:
        fresh = built_at(folder) != before.get(folder.name)
        print(f"{'published' if fresh else 'up to date'} {folder}")
    return 0


def built_at(folder: Path) -> int | None:
    """When the folder's manifest was written (publishing swaps the whole folder in)."""
    manifest = folder / MANIFEST_FILE
    return manifest.stat().st_mtime_ns if manifest.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
