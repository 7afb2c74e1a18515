"""The raw baseline: the published model run directly, by the published code itself (the
runner's `Runner`, ECLAIR's `eclair_runtime.py`), with the same weights and precision, without
the server. A `python_compiled` model is measured on each raw path the card can run: the exported
program eager, compiled, and compiled with CUDA graphs (a GPU only); the best is the baseline."""
from __future__ import annotations

import json
import time
from pathlib import Path

from google.protobuf import json_format

from converters.errors import UserError
from converters.model_folder import VERSION, read_model_config
from converters.runners.model_support import load_beside
from converters.serve_backends import SERVE_BACKENDS
from scripts.bench.limits import flops_per_item
from scripts.bench.points import (DEFAULT_SEQUENCE_LENGTH, BenchPoint, bench_inputs, gpu_memory_mb, input_shapes,
                                  percentiles, warm_up)

COMPILED_PROGRAM = SERVE_BACKENDS["python_compiled"].model_file
RAW_MODES = ("eager", "compiled", "graphs")  # the compiled runner's modes, graphs on a GPU only


def parse_raw_modes(text: str | None) -> frozenset[str] | None:
    """`--raw-paths` (comma-separated RAW_MODES) as a set; None (every path the card runs) when not given."""
    if text is None:
        return None
    modes = frozenset(m.strip() for m in text.split(",") if m.strip())
    unknown = sorted(modes - set(RAW_MODES))
    if unknown or not modes:
        raise UserError(f"--raw-paths takes some of {','.join(RAW_MODES)}, got {text!r}.")
    return modes


def raw_paths(model_dir: Path) -> list[str | None]:
    """The compiled runner's modes this card can run; [None] (the one path) for any other model."""
    if not (Path(model_dir) / VERSION / COMPILED_PROGRAM).is_file():
        return [None]
    params = {k: v.string_value for k, v in read_model_config(model_dir).parameters.items()}
    return list(RAW_MODES if RawModel.device(params).startswith("cuda") else RAW_MODES[:2])


class RawModel:
    """`run(feeds) -> outputs` of a published model, as its python-backend model computes it;
    `mode` picks a compiled model's raw path. `kind` names the path in the report."""

    def __init__(self, model_dir: Path, mode: str | None = None,
                 sequence_length: int | None = DEFAULT_SEQUENCE_LENGTH) -> None:
        config = read_model_config(model_dir)
        version = Path(model_dir) / VERSION
        config_json = json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True))
        params = {k: v.string_value for k, v in config.parameters.items()}
        self.kind, self.flops_per_item = "raw" if mode is None else f"raw {mode}", None
        if (version / COMPILED_PROGRAM).is_file():
            runner = load_beside(version, f"raw_{config.name}_model", "model.py").Runner(
                str(version), config_json, params, self.device(params), mode=mode)
            self.run = runner.run
            if mode == "eager":  # FLOPs counted on the program as exported, one item
                one = bench_inputs(model_dir, 1, sequence_length)  # the FLOPs of the length measured
                self.flops_per_item = flops_per_item(runner.call, runner.tensors(one))
        elif (version / "model.onnx").is_file() or (version / "model.pt").is_file():
            runner = load_beside(version, f"raw_{config.name}_model", "model.py").Runner(
                str(version), config_json, params, self.device(params))
            self.run = runner.run
        elif (version / "eclair_runtime.py").is_file():
            runtime_module = load_beside(version, "eclair_runtime")
            runtime = runtime_module.EclairRuntime.for_serving(version / "checkpoint", params)
            self.run = lambda feeds: runtime(feeds["image"])
        else:
            raise UserError(f"{model_dir} has no model.onnx, model.pt or eclair_runtime.py to run raw "
                            "(engines are benchmarked served only).")

    @staticmethod
    def device(params: dict[str, str]) -> str:
        """The GPU where one is there and the config's `device` names it (as the python_torch
        runner's CPU instances drive it); ONNX Runtime runs on the CPU here, as served."""
        import torch

        wanted = params.get("device", "cpu")
        return wanted if wanted.startswith("cuda") and torch.cuda.is_available() else "cpu"


def raw_point(raw: RawModel, model_dir: Path, batch: int, duration_s: float,
              sequence_length: int | None = DEFAULT_SEQUENCE_LENGTH) -> BenchPoint:
    feeds = bench_inputs(model_dir, batch, sequence_length)
    warm_up(lambda: raw.run(feeds))
    latencies = []
    deadline = time.monotonic() + duration_s
    started = time.monotonic()
    while time.monotonic() < deadline:
        begun = time.perf_counter()
        raw.run(feeds)  # outputs are copied to the host, as the served path does
        latencies.append(time.perf_counter() - begun)
    wall = time.monotonic() - started
    p50, p95, p99 = percentiles(latencies)
    return BenchPoint(model_dir.name, raw.kind, batch, 1, len(latencies), len(latencies) * batch / wall, p50, p95, p99,
                      gpu_memory_mb(), flops_per_item=raw.flops_per_item, input_shapes=input_shapes(feeds))
