"""The raw baseline: the published model run directly, by the published code itself (the
runner's `Runner`, ECLAIR's `eclair_runtime.py`), with the same weights and precision, without
the server."""
from __future__ import annotations

import json
import time
from pathlib import Path

from google.protobuf import json_format

from converters.errors import UserError
from converters.model_folder import VERSION, Golden, read_model_config
from converters.runners.model_support import load_beside
from scripts.bench.points import BenchPoint, gpu_memory_mb, percentiles, warm_up


class RawModel:
    """`run(feeds) -> outputs` of a published model, as its python-backend model computes it."""

    def __init__(self, model_dir: Path) -> None:
        config = read_model_config(model_dir)
        version = Path(model_dir) / VERSION
        config_json = json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True))
        params = {k: v.string_value for k, v in config.parameters.items()}
        if (version / "model.onnx").is_file() or (version / "model.pt").is_file():
            runner = load_beside(version, f"raw_{config.name}_model", "model.py").Runner(
                str(version), config_json, params, self._device(params))
            self.run = runner.run
        elif (version / "eclair_runtime.py").is_file():
            runtime_module = load_beside(version, "eclair_runtime")
            runtime = runtime_module.EclairRuntime.for_serving(version / "checkpoint", params)
            self.run = lambda feeds: runtime(feeds["image"])
        else:
            raise UserError(f"{model_dir} has no model.onnx, model.pt or eclair_runtime.py to run raw "
                            "(engines are benchmarked served only).")

    @staticmethod
    def _device(params: dict[str, str]) -> str:
        """The GPU where one is there and the config's `device` names it (as the python_torch
        runner's CPU instances drive it); ONNX Runtime runs on the CPU here, as served."""
        import torch

        wanted = params.get("device", "cpu")
        return wanted if wanted.startswith("cuda") and torch.cuda.is_available() else "cpu"


def raw_point(raw: RawModel, model_dir: Path, batch: int, duration_s: float) -> BenchPoint:
    feeds = Golden.read(model_dir).tiled_inputs(batch)
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
    return BenchPoint(model_dir.name, "raw", batch, 1, len(latencies), len(latencies) * batch / wall, p50, p95, p99,
                      gpu_memory_mb())
