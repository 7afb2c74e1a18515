"""What one bench point measures, and the measuring both the served and the raw bench share."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class BenchPoint:
    model: str
    kind: str  # served | raw
    batch: int
    concurrency: int
    requests: int
    items_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    gpu_mem_mb: float | None
    # Triton's own per-request means over the timed window (served points only): the time from
    # receipt to response, of which queued and computing (the backend: inputs, execute, outputs).
    server_ms: float | None = None
    server_queue_ms: float | None = None
    server_compute_ms: float | None = None
    flops_per_item: float | None = None  # raw eager points of a compiled model: for the fp16 limit
    input_shapes: dict | None = None  # what each request sent: {input: [batch, ...]}


DEFAULT_SEQUENCE_LENGTH = 128  # tokens per text for the text cores' variable axis: what the GPU figures use


def bench_inputs(model_dir, batch: int, sequence_length: int | None = DEFAULT_SEQUENCE_LENGTH) -> dict[str, np.ndarray]:
    """A point's request: the golden inputs' rows repeated up to `batch`; where an input's axis is
    variable (-1: the text cores' tokens), that axis is `sequence_length` long: the golden row's
    tokens repeated, masks all ones (every token real). None: the golden inputs' own lengths."""
    from converters.model_folder import Golden, read_model_config

    feeds = Golden.read(model_dir).tiled_inputs(batch)
    if sequence_length is None:
        return feeds
    for spec in read_model_config(model_dir).input:
        if spec.name in feeds and list(spec.dims) == [-1]:
            value = feeds[spec.name]
            if "mask" in spec.name:
                feeds[spec.name] = np.ones((batch, sequence_length), dtype=value.dtype)
            else:
                feeds[spec.name] = np.resize(value[0], (batch, sequence_length)).astype(value.dtype)
    return feeds


def input_shapes(feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in feeds.items()}


def gpu_memory_mb() -> float | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)
    return float(sum(float(v) for v in out.stdout.split())) if out.returncode == 0 else None


def device_name() -> str:
    """What the figures were measured on: the GPU's name, else the CPU count."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    return f"CPU, {os.cpu_count()} cores"


def host_cpu() -> str:
    """The host's processor and core count: raw paths that launch kernels from Python (`generate`)
    run at the host's speed, so reports name it beside the GPU."""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    values = np.percentile(np.asarray(latencies) * 1000.0, [50, 95, 99])
    return float(values[0]), float(values[1]), float(values[2])


def warm_up(call, calls: int = 3, seconds: float = 0.5) -> int:
    """A few untimed calls: the first ones compile CUDA kernels and TorchScript's optimised graph.
    Returns how many were made."""
    started, done = time.monotonic(), 0
    while done < calls or time.monotonic() - started < seconds:
        call()
        done += 1
    return done
