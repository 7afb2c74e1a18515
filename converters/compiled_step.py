"""The `python_compiled` serve backend's build step: the model as a `torch.export` program
(`1/model.pt2`), then the published runner itself compiles it for every bucket, which fills the
Inductor cache published beside it (`1/compile_cache/`), and answers a padded batch that is
checked against the unpadded program before anything is published.

The cache is only valid for the torch, Triton-compiler and GPU it was made with: the manifest's
fingerprint holds the tool versions and the GPU, so a change of either rebuilds. A cache miss
is never wrong, only slow (the server compiles at load)."""
from __future__ import annotations

import copy
import functools
import importlib.util
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from google.protobuf import json_format

from converters.batching import BatchPlan
from converters.check import CheckResult, compare
from converters.errors import UserError
from converters.io_config import IOConfig
from converters.runners import COMPILED_RUNNER, MODEL_SUPPORT

# Sequence buckets for models whose variable axis may be padded with zeros (a token mask).
SEQUENCE_BUCKETS = (16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class CompiledBuild:
    program: Path  # scratch/1/model.pt2
    cache: Path  # scratch/1/compile_cache
    buckets: int  # the shapes compiled at load (`Runner.load_shapes`)
    seconds: float  # compile of every bucket, cold
    check: CheckResult  # padded batch through the runner against the unpadded program


def sequence_buckets(io: IOConfig, inputs: tuple[str, ...], pad_sequence: bool) -> str:
    """The runner's `sequence_buckets` parameter: the buckets up to the longest input allowed."""
    variable = [io.input(name) for name in inputs if io.input(name).is_dynamic]
    if not variable or not pad_sequence:
        return ""
    longest = max(max(spec.max_shape or (SEQUENCE_BUCKETS[-1],)) for spec in variable)
    sizes = [size for size in SEQUENCE_BUCKETS if size < longest] + [longest]
    return ",".join(map(str, sizes))


def export_program(model: torch.nn.Module, io: IOConfig, plan: BatchPlan, inputs: tuple[str, ...],
                   sample: dict[str, np.ndarray], device: str, half: bool, path: Path,
                   fp8_layers: list[str] | None = None) -> Path:
    """`torch.export` to `path` with the batch axis and the variable axes dynamic (one shared
    sequence size), taking the served inputs in the config's order; `fp8_layers`: these linear
    layers quantised (converters/fp8.py) after the cast to fp16."""
    device = "cuda:0" if device == "cuda" else device  # a concrete device: the runner moves it to its own GPU
    model = copy.deepcopy(model).to(device).eval()
    args = tuple(torch.from_numpy(sample[name]).to(device) for name in inputs)
    if half:
        model = model.half()
        args = tuple(a.half() if a.is_floating_point() else a for a in args)
    if fp8_layers:
        from converters.fp8 import quantise_linear_layers

        quantise_linear_layers(model, names=fp8_layers)
    batch = torch.export.Dim("batch", min=1, max=plan.max_batch_size)
    dynamic = []
    for name in inputs:
        spec = io.input(name)
        axes = {0: batch}
        for axis, size in enumerate(spec.shape):
            if size == -1:
                longest = (spec.max_shape or (plan.sequence_length,))[0]
                axes[axis + 1] = torch.export.Dim("sequence", min=1, max=longest)
        dynamic.append(axes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(model, args, dynamic_shapes=tuple(dynamic), strict=False)
        except Exception as exc:
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UserError(f"torch.export of --model-class-name failed ({message}); python_compiled needs a "
                            "graph without data-dependent control flow: serve it with python_torch instead.") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


@functools.cache
def runner_module():
    """The published runner file itself, so the build compiles exactly what the server will."""
    sys.modules.setdefault("model_support", _module("model_support", MODEL_SUPPORT))
    return _module("compiled_runner", COMPILED_RUNNER)


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def warm_and_check(program: Path, config, parameters: dict[str, str], io: IOConfig, plan: BatchPlan,
                   inputs: tuple[str, ...], device: str, tolerance: tuple[float, float]) -> CompiledBuild:
    """Compile every bucket into the folder's cache, then compare a batch that must be padded
    (batch and sequence one short of a bucket) with the exported program run eagerly unpadded."""
    from converters.export import make_sample

    runner = runner_module()
    folder = program.parent
    shutil.rmtree(folder / runner.CACHE_FOLDER, ignore_errors=True)
    config_dict = json_format.MessageToDict(config, preserving_proto_field_name=True)
    started = time.perf_counter()
    compiled = runner.Runner(str(folder), config_dict, parameters, device, mode=None, cache_writable=True)
    seconds = time.perf_counter() - started
    eager = runner.Runner(str(folder), config_dict, parameters, device, mode="eager")
    odd_batch = max(1, min(plan.max_batch_size, 3))
    odd_length = max(1, min(plan.sequence_length, 100) - 3)
    feeds = make_sample(io, replace(plan, sequence_length=odd_length), batch=odd_batch, seed=3)
    feeds = {name: feeds[name] for name in inputs}
    check = compare(eager.run(feeds), compiled.run(feeds), tolerance)
    if not check.ok:
        raise UserError(f"the compiled model answers a padded batch differently from the exported program:\n"
                        f"{check.report()}\nnothing was published; serve it with python_torch.")
    return CompiledBuild(program, folder / runner.CACHE_FOLDER, len(compiled.load_shapes), seconds, check)
