"""Load through Triton at a sweep of batch sizes and concurrencies, the same sweep on the raw
model (same weights and precision, no server), a report (JSON, CSV, PNG plots), and `tune`.

The load generator is tritonclient's gRPC client, one client per concurrent caller (threads),
sending the model's golden inputs tiled to the batch size: the numbers perf_analyzer reports
(items/s, p50/p95/p99 latency) without needing its glibc >= 2.38.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from converters.errors import UserError
from converters.pipeline import GOLDEN_NAME
from converters.triton_config import read_config

_WIRE = {"TYPE_FP32": "FP32", "TYPE_FP16": "FP16", "TYPE_INT64": "INT64", "TYPE_INT32": "INT32",
         "TYPE_UINT8": "UINT8", "TYPE_STRING": "BYTES", "TYPE_BOOL": "BOOL"}


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
    import os

    return f"CPU, {os.cpu_count()} cores"


def batch_inputs(model_dir: Path, batch: int) -> dict[str, np.ndarray]:
    """The golden inputs, rows repeated up to `batch` (realistic values, any batch size)."""
    with np.load(model_dir / GOLDEN_NAME) as golden:
        inputs = {k[len("input__"):]: golden[k] for k in golden.files if k.startswith("input__")}
    return {name: np.resize(value, (batch,) + value.shape[1:]) for name, value in inputs.items()}


def _percentiles(latencies: list[float]) -> tuple[float, float, float]:
    values = np.percentile(np.asarray(latencies) * 1000.0, [50, 95, 99])
    return float(values[0]), float(values[1]), float(values[2])


def _input_tensors(client, feeds: dict[str, np.ndarray], wire: dict[str, str], region: str | None):
    """The request's inputs: in the request body, or (with a region name) the numeric ones in one
    system shared-memory region registered with the server. A 1024x1024 fp32 page is 12.6 MB that
    gRPC would otherwise serialise and copy on every call. Returns (tensors, shared-memory handle)."""
    import tritonclient.grpc as grpc

    numeric = {n: v for n, v in feeds.items() if n in wire and wire[n] != "BYTES"}
    handle = None
    if region and numeric:
        import tritonclient.utils.shared_memory as shm

        size = sum(v.nbytes for v in numeric.values())
        handle = shm.create_shared_memory_region(region, f"/{region}", size)
        try:
            client.register_system_shared_memory(region, f"/{region}", size)
        except Exception:
            shm.destroy_shared_memory_region(handle)
            raise
    tensors, offset = [], 0
    for name, value in feeds.items():
        if name not in wire:
            continue
        tensor = grpc.InferInput(name, list(value.shape), wire[name])
        if handle is not None and name in numeric:
            shm.set_shared_memory_region(handle, [np.ascontiguousarray(value)], offset)
            tensor.set_shared_memory(region, value.nbytes, offset)
            offset += value.nbytes
        else:
            tensor.set_data_from_numpy(value.astype(object) if wire[name] == "BYTES" else value)
        tensors.append(tensor)
    return tensors, handle


def _release(client, region: str, handle, attempts: int = 40) -> None:
    """Unregister the region, then unlink it. Triton may still hold the last request's reference
    for a moment after answering it ("currently in use"), so unregistering is retried briefly."""
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import InferenceServerException

    try:
        for attempt in range(attempts):
            try:
                client.unregister_system_shared_memory(region)
                return
            except InferenceServerException as exc:
                if "in use" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05)
    finally:
        shm.destroy_shared_memory_region(handle)


_SERVER_PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def server_totals(client, model: str) -> dict[str, float]:
    """Triton's cumulative statistics of one model: requests and ns per phase."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
    totals = {phase: float(stats.get(phase, {}).get("ns", 0)) for phase in _SERVER_PHASES}
    totals["requests"] = float(stats.get("success", {}).get("count", 0))
    return totals


def server_means_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Per-request means (ms) between two `server_totals` snapshots."""
    count = after["requests"] - before["requests"]
    if count <= 0:
        return {"server_ms": None, "server_queue_ms": None, "server_compute_ms": None}

    def mean(*phases: str) -> float:
        return sum(after[p] - before[p] for p in phases) / count / 1e6

    return {"server_ms": mean("success"), "server_queue_ms": mean("queue"),
            "server_compute_ms": mean("compute_input", "compute_infer", "compute_output")}


def served_point(grpc_url: str, model_dir: Path, batch: int, concurrency: int, duration_s: float,
                 shared_memory: bool = False) -> BenchPoint:
    import tritonclient.grpc as grpc
    from tritonclient.grpc import model_config_pb2 as pb

    config = read_config(model_dir / "config.pbtxt")
    feeds = batch_inputs(model_dir, batch)
    wire = {i.name: _WIRE[pb.DataType.Name(i.data_type)] for i in config.input}
    latencies: list[float] = []
    lock, errors, clock, totals = threading.Lock(), [], [], []
    stats_client = grpc.InferenceServerClient(grpc_url)

    def open_window() -> None:
        totals.append(server_totals(stats_client, config.name))
        clock.append(time.monotonic())

    # The timed window opens once every caller is warm: a first call can take seconds (CUDA kernels).
    barrier = threading.Barrier(concurrency, action=open_window)

    def caller(index: int) -> None:
        client = grpc.InferenceServerClient(grpc_url)
        mine, handle, region = [], None, f"bench_{os.getpid()}_{index}" if shared_memory else None
        try:
            tensors, handle = _input_tensors(client, feeds, wire, region)
            warm_up(lambda: client.infer(config.name, tensors))
            barrier.wait()
            deadline = clock[0] + duration_s
            while time.monotonic() < deadline:
                started = time.perf_counter()
                client.infer(config.name, tensors)
                mine.append(time.perf_counter() - started)
        except threading.BrokenBarrierError:  # another caller failed its warm-up
            pass
        except Exception as exc:  # reported below with the model and the point
            errors.append(str(exc))
            barrier.abort()
        finally:
            try:
                if handle is not None:
                    _release(client, region, handle)
            except Exception as exc:  # the point fails with the reason, and the other callers' figures stay
                errors.append(f"releasing shared-memory region {region}: {exc}")
            client.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - clock[0] if clock else 0.0
    try:  # every timed request has been answered (the callers have joined): the window's counts are complete
        server = server_means_ms(totals[0], server_totals(stats_client, config.name)) if totals else {}
    finally:
        stats_client.close()
    if errors or not latencies:
        raise UserError(f"bench of {config.name} at batch {batch}, concurrency {concurrency} failed: "
                        f"{errors[0] if errors else 'no request finished'}")
    p50, p95, p99 = _percentiles(latencies)
    return BenchPoint(config.name, "served", batch, concurrency, len(latencies), len(latencies) * batch / wall,
                      p50, p95, p99, gpu_memory_mb(), **server)


class RawModel:
    """The published artifact run directly, as the server's runner would, without the server."""

    def __init__(self, model_dir: Path) -> None:
        config = read_config(model_dir / "config.pbtxt")
        self.inputs = [i.name for i in config.input]
        version = model_dir / "1"
        if (version / "model.onnx").is_file():
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
            self.run = lambda feeds: self.session.run(None, {n: feeds[n] for n in self.inputs})
        elif (version / "model.pt").is_file():
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            half = device == "cuda" and config.parameters["precision"].string_value == "fp16"
            module = torch.jit.load(str(version / "model.pt"), map_location=device).eval()  # traced in its precision

            def run(feeds):
                tensors = [torch.from_numpy(feeds[n]).to(device) for n in self.inputs]
                tensors = [t.half() if half and t.is_floating_point() else t for t in tensors]
                with torch.inference_mode(), torch.jit.optimized_execution(False):  # as torch_runner.py runs it
                    result = module(*tensors)
                return [r.float().cpu().numpy() for r in (result if isinstance(result, (tuple, list)) else [result])]

            self.run = run
        elif (version / "eclair_runtime.py").is_file():
            self.run = _eclair_raw(version, config)
        else:
            raise UserError(f"{model_dir} has no model.onnx, model.pt or eclair_runtime.py to run raw "
                            "(engines are benchmarked served only).")


def _eclair_raw(version: Path, config):
    """ECLAIR's PyTorch runtime on the published checkpoint, as its python model runs it."""
    from triton_models.eclair.runtime import EclairRuntime  # the code published beside the model

    params = {k: v.string_value for k, v in config.parameters.items()}
    runtime = EclairRuntime.for_serving(version / "checkpoint", params)
    return lambda feeds: runtime(feeds["image"])


def warm_up(call, calls: int = 3, seconds: float = 0.5) -> None:
    """A few untimed calls: the first ones compile CUDA kernels and TorchScript's optimised graph."""
    started, done = time.monotonic(), 0
    while done < calls or time.monotonic() - started < seconds:
        call()
        done += 1


def raw_point(raw: RawModel, model_dir: Path, batch: int, duration_s: float) -> BenchPoint:
    feeds = batch_inputs(model_dir, batch)
    warm_up(lambda: raw.run(feeds))
    latencies = []
    deadline = time.monotonic() + duration_s
    started = time.monotonic()
    while time.monotonic() < deadline:
        begun = time.perf_counter()
        raw.run(feeds)  # outputs are copied to the host, as the served path does
        latencies.append(time.perf_counter() - begun)
    wall = time.monotonic() - started
    p50, p95, p99 = _percentiles(latencies)
    return BenchPoint(model_dir.name, "raw", batch, 1, len(latencies), len(latencies) * batch / wall, p50, p95, p99,
                      gpu_memory_mb())


def sweep(grpc_url: str, model_dirs: list[Path], batches: list[int], concurrencies: list[int], duration_s: float,
          raw: bool = True, shared_memory: bool = False) -> list[BenchPoint]:
    from tqdm import tqdm

    plan = []
    for model_dir in model_dirs:
        max_batch = read_config(model_dir / "config.pbtxt").max_batch_size
        if max_batch == 0:
            continue  # not batched: one request is one item
        sizes = [b for b in batches if b <= max_batch]
        plan += [(model_dir, b, c) for b in sizes for c in concurrencies]
        if raw:
            plan += [(model_dir, b, 0) for b in sizes]
    points, raw_models = [], {}
    for model_dir, batch, concurrency in tqdm(plan, desc="bench", unit="point"):
        if concurrency == 0:
            if model_dir not in raw_models:  # loaded once per model; only one held at a time
                raw_models = {model_dir: RawModel(model_dir)}
            points.append(raw_point(raw_models[model_dir], model_dir, batch, duration_s))
        else:
            points.append(served_point(grpc_url, model_dir, batch, concurrency, duration_s, shared_memory))
    return points


def summary(points: list[BenchPoint]) -> list[dict]:
    """Per model and batch: the best served throughput (over concurrencies) and its ratio to raw."""
    rows = []
    for model in sorted({p.model for p in points}):
        for batch in sorted({p.batch for p in points if p.model == model}):
            served = [p for p in points if p.model == model and p.batch == batch and p.kind == "served"]
            raw = [p for p in points if p.model == model and p.batch == batch and p.kind == "raw"]
            if not served:
                continue
            best = max(served, key=lambda p: p.items_per_s)
            single = next((p for p in served if p.concurrency == 1), None)
            # At concurrency 1 (nothing queued), the overhead per request over the raw model, and how
            # it splits: the client and gRPC (outside Triton), and the backend (copies into and out of
            # the python stub, its IPC, and anything the model file does beyond the raw call).
            overhead = single.p50_ms - raw[0].p50_ms if raw and single else None
            backend = (single.server_compute_ms - raw[0].p50_ms
                       if raw and single and single.server_compute_ms is not None else None)
            transport = single.p50_ms - single.server_ms if single and single.server_ms is not None else None
            rows.append({"model": model, "batch": batch, "best_concurrency": best.concurrency,
                         "server_overhead_ms": overhead, "backend_overhead_ms": backend, "transport_ms": transport,
                         "served_items_per_s": best.items_per_s, "p95_ms": best.p95_ms,
                         "raw_items_per_s": raw[0].items_per_s if raw else None,
                         "served_over_raw": best.items_per_s / raw[0].items_per_s if raw else None})
    return rows


def write_report(points: list[BenchPoint], out_dir: Path, meta: dict) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "points": [asdict(p) for p in points], "summary": summary(points)}
    paths = [out_dir / "bench.json", out_dir / "bench.csv"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    with open(paths[1], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(points[0])))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)
    try:
        return paths + plot(points, out_dir, meta.get("device", ""))
    except ImportError:  # a GPU box without matplotlib: `python -m scripts.bench plot REPORT` draws them later
        return paths


def plot(points: list[BenchPoint], out_dir: Path, device: str) -> list[Path]:
    """Throughput and p95 latency against batch size, one PNG per model, raw model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for model in sorted({p.model for p in points}):
        mine = [p for p in points if p.model == model]
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for kind, concurrency in sorted({(p.kind, p.concurrency) for p in mine}, key=lambda k: (k[0] == "raw", k[1])):
            line = sorted((p for p in mine if (p.kind, p.concurrency) == (kind, concurrency)), key=lambda p: p.batch)
            label = "raw model (no server)" if kind == "raw" else f"served, concurrency {concurrency}"
            style = "k--o" if kind == "raw" else "-o"
            left.plot([p.batch for p in line], [p.items_per_s for p in line], style, label=label)
            right.plot([p.batch for p in line], [p.p95_ms for p in line], style, label=label)
        for axis, title, unit in ((left, "throughput", "items/s"), (right, "p95 latency", "ms")):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("batch size")
            axis.set_ylabel(unit)
            axis.set_title(f"{model}: {title}")
            axis.grid(True, alpha=0.3)
        left.legend(fontsize=8)
        figure.suptitle(device, fontsize=9)
        figure.tight_layout()
        path = out_dir / f"bench_{model}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def choose_batch_sizes(points: list[dict], budget_ms: float, metric: str = "p95_ms") -> dict[str, int]:
    """Per model: the batch size of the highest served throughput whose latency metric fits the budget."""
    chosen = {}
    for model in sorted({p["model"] for p in points}):
        fitting = [p for p in points if p["model"] == model and p["kind"] == "served" and p[metric] <= budget_ms]
        if fitting:
            chosen[model] = max(fitting, key=lambda p: p["items_per_s"])["batch"]
    return chosen


if __name__ == "__main__":
    # `python -m scripts.bench plot REPORT.json`: draw the plots of a report (e.g. one from a GPU box).
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "plot":
        sys.exit("usage: python -m scripts.bench plot REPORT.json")
    data = json.loads(Path(sys.argv[2]).read_text())
    for path in plot([BenchPoint(**p) for p in data["points"]], Path(sys.argv[2]).parent, data["meta"].get("device", "")):
        print(path)
