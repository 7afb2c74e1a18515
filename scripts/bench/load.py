"""The load generator: tritonclient's gRPC client, one client per concurrent caller (threads),
sending the model's golden inputs tiled to the batch size, optionally through system shared
memory; Triton's own statistics of the same window. The numbers perf_analyzer reports (items/s,
p50/p95/p99 latency) without needing its glibc >= 2.38."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from converters.errors import UserError
from converters.model_folder import read_model_config, wire_type
from scripts.verify import REQUEST_TIMEOUT_S
from scripts.bench.points import (DEFAULT_SEQUENCE_LENGTH, BenchPoint, bench_inputs, gpu_memory_mb, input_shapes,
                                  percentiles, warm_up)


def input_tensors(client, feeds: dict[str, np.ndarray], wire: dict[str, str], region: str | None):
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
            client.register_system_shared_memory(region, f"/{region}", size, client_timeout=REQUEST_TIMEOUT_S)
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


def release(client, region: str, handle, attempts: int = 40) -> None:
    """Unregister the region, then unlink it. Triton may still hold the last request's reference
    for a moment after answering it ("currently in use"), so unregistering is retried briefly."""
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import InferenceServerException

    try:
        for attempt in range(attempts):
            try:
                client.unregister_system_shared_memory(region, client_timeout=REQUEST_TIMEOUT_S)
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
    stats = client.get_inference_statistics(model, as_json=True, client_timeout=REQUEST_TIMEOUT_S)["model_stats"][0]["inference_stats"]
    totals = {phase: float(stats.get(phase, {}).get("ns", 0)) for phase in _SERVER_PHASES}
    totals["requests"] = float(stats.get("success", {}).get("count", 0))
    return totals


def settled_totals(client, model: str, requests: float, timeout_s: float = 2.0) -> dict[str, float]:
    """`server_totals` once Triton has counted at least `requests` successes (or after `timeout_s`):
    it records a request's statistics as it releases the response, which can follow the client's
    receipt, so a snapshot taken at once may miss the last requests answered."""
    deadline = time.monotonic() + timeout_s
    totals = server_totals(client, model)
    while totals["requests"] < requests and time.monotonic() < deadline:
        time.sleep(0.005)
        totals = server_totals(client, model)
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
                 shared_memory: bool = False, sequence_length: int | None = DEFAULT_SEQUENCE_LENGTH) -> BenchPoint:
    import tritonclient.grpc as grpc

    config = read_model_config(model_dir)
    feeds = bench_inputs(model_dir, batch, sequence_length)
    wire = {i.name: wire_type(i.data_type) for i in config.input}
    latencies: list[float] = []
    lock, errors, clock, totals, warm_calls = threading.Lock(), [], [], [], []
    stats_client = grpc.InferenceServerClient(grpc_url)
    before_warm_up = server_totals(stats_client, config.name)

    def open_window() -> None:  # after every warm-up call is counted: none of them in the window's means
        totals.append(settled_totals(stats_client, config.name, before_warm_up["requests"] + sum(warm_calls)))
        clock.append(time.monotonic())

    # The timed window opens once every caller is warm: a first call can take seconds (CUDA kernels).
    barrier = threading.Barrier(concurrency, action=open_window)

    def caller(index: int) -> None:
        client = grpc.InferenceServerClient(grpc_url)
        mine, handle, region = [], None, f"bench_{os.getpid()}_{index}" if shared_memory else None
        try:
            tensors, handle = input_tensors(client, feeds, wire, region)
            calls = warm_up(lambda: client.infer(config.name, tensors, client_timeout=REQUEST_TIMEOUT_S))
            with lock:
                warm_calls.append(calls)
            barrier.wait()
            deadline = clock[0] + duration_s
            while time.monotonic() < deadline:
                started = time.perf_counter()
                client.infer(config.name, tensors, client_timeout=REQUEST_TIMEOUT_S)
                mine.append(time.perf_counter() - started)
        except threading.BrokenBarrierError:  # another caller failed its warm-up
            pass
        except Exception as exc:  # reported below with the model and the point
            errors.append(str(exc))
            barrier.abort()
        finally:
            try:
                if handle is not None:
                    release(client, region, handle)
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
    try:  # every timed request has been answered (the callers have joined); wait until Triton has counted them
        server = (server_means_ms(totals[0], settled_totals(stats_client, config.name,
                                                            totals[0]["requests"] + len(latencies)))
                  if totals else {})
    finally:
        stats_client.close()
    if errors or not latencies:
        raise UserError(f"bench of {config.name} at batch {batch}, concurrency {concurrency} failed: "
                        f"{errors[0] if errors else 'no request finished'}")
    p50, p95, p99 = percentiles(latencies)
    return BenchPoint(config.name, "served", batch, concurrency, len(latencies), len(latencies) * batch / wall,
                      p50, p95, p99, gpu_memory_mb(), **server, input_shapes=input_shapes(feeds))
