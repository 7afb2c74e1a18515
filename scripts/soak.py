"""`stack soak`: N gRPC clients for T minutes over every served model, their golden inputs with a
malformed request every tenth call, while the server's and each model process's resident memory
is sampled. It reports answers right / wrong / failed, malformed requests refused, latency
percentiles over time and memory over time (JSON and a plot), and fails on a wrong answer, a
failed good request, an accepted malformed one, a dead server, or memory still rising over the
last third of the run."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from scripts.processes import descendants, label as process_label, private_memory_mb
from scripts.verify import REQUEST_TIMEOUT_S, GoldenRequest

BAD_EVERY = 10  # every tenth call of a client is malformed
# Memory counts as still rising when a straight line through the last third of the samples climbs
# more than this over that third (MB, and a fraction of the mean): allocator noise stays under it.
RISE_LIMIT_MB, RISE_LIMIT_FRACTION = 32.0, 0.05
# A shorter run is still warming up (first batches of each shape, allocator pools filling): its last
# third says nothing about a plateau, so its memory is reported but not judged.
JUDGED_AFTER_S = 120.0


def memory_mb(pid: int) -> dict[str, float]:
    """Memory (MB) of `pid` (tritonserver) and of each of its descendants, labelled by what runs
    there (a python-backend stub by its model's name), plus the python backend's shared-memory
    regions, each counted once. A process's figure is its private resident memory: the shared
    regions are mapped by the server and a stub both, so RSS would count them twice. Read from
    /proc (Linux; a container's through its root)."""
    found: dict[str, float] = {}
    for current in descendants(pid):
        memory = private_memory_mb(current)
        if memory is not None:
            found[process_label(current, pid)] = memory
    regions = Path(f"/proc/{pid}/root/dev/shm")
    try:
        found["python backend shm"] = sum(p.stat().st_blocks * 512 for p in regions.glob("triton_python_backend_shm_region_*")) / 2**20
    except (FileNotFoundError, PermissionError):
        pass
    return found


def memory_rise(times: list[float], values: list[float]) -> float:
    """MB gained over the last third of the run by a least-squares line through its samples."""
    if len(times) < 6:
        return 0.0
    start = times[0] + (times[-1] - times[0]) * 2 / 3
    points = [(t, v) for t, v in zip(times, values) if t >= start]
    if len(points) < 3:
        return 0.0
    x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    slope = float(np.polyfit(x, y, 1)[0])
    return slope * float(x[-1] - x[0])


@dataclass
class Call:
    at: float  # seconds since the start
    model: str
    bad: bool
    outcome: str  # right | wrong | failed | refused | accepted (a malformed request answered)
    seconds: float
    detail: str = ""


@dataclass
class SoakResult:
    clients: int
    seconds: float
    counts: dict[str, int]
    per_model: dict[str, dict[str, int]]
    latency_windows: list[dict]  # per window: start s, good requests, p50/p95/p99 ms
    memory: dict[str, list[float]]  # label -> MB per sample
    memory_times: list[float]
    memory_rise_mb: dict[str, float]
    server_alive: bool
    first_problems: list[str] = field(default_factory=list)

    @property
    def memory_judged(self) -> bool:
        return self.seconds >= JUDGED_AFTER_S

    @property
    def memory_rising(self) -> bool:
        if not self.memory_judged:
            return False
        total = self.memory.get("total", [0.0])
        return self.memory_rise_mb.get("total", 0.0) > max(RISE_LIMIT_MB, RISE_LIMIT_FRACTION * float(np.mean(total)))

    @property
    def failures(self) -> list[str]:
        found = []
        for outcome, what in (("wrong", "wrong answers"), ("failed", "failed good requests"),
                              ("accepted", "malformed requests answered instead of refused")):
            if self.counts.get(outcome):
                found.append(f"{self.counts[outcome]} {what}")
        if not self.server_alive:
            found.append("the server died")
        if self.memory_rising:
            found.append(f"memory still rising over the last third (+{self.memory_rise_mb['total']:.0f} MB)")
        return found


def _malformed(request: GoldenRequest, protocol, call: int) -> list:
    """A request Triton must refuse: the first input with another data type, or under a name the
    model does not have."""
    name, value = next((n, v) for n, v in request.golden.inputs.items() if n in request.wire)
    if call % 2:
        tensor = protocol.InferInput("no_such_input", list(value.shape), request.wire[name])
        tensor.set_data_from_numpy(value.astype(object) if request.wire[name] == "BYTES" else value)
        return [tensor]
    wrong = np.zeros(value.shape, dtype=np.int32 if request.wire[name] != "INT32" else np.float32)
    tensor = protocol.InferInput(name, list(wrong.shape), "INT32" if request.wire[name] != "INT32" else "FP32")
    tensor.set_data_from_numpy(wrong)
    return [tensor]


def run_soak(grpc_url: str, folders: dict[str, Path], server_pid, alive, clients: int, seconds: float,
             sample_every_s: float = 5.0, window_s: float = 30.0) -> SoakResult:
    """`server_pid()`: tritonserver's pid as this host sees it (or None); `alive()`: False once the
    server is gone."""
    import tritonclient.grpc as grpc

    requests = [GoldenRequest(folder) for folder in folders.values()]
    requests = [r for r in requests if not r.problem]
    calls: list[Call] = []
    lock, started = threading.Lock(), time.monotonic()
    deadline = started + seconds
    samples: list[tuple[float, dict[str, float]]] = []
    stop = threading.Event()

    def client_loop(index: int) -> None:
        client, mine = grpc.InferenceServerClient(grpc_url), []
        count = 0
        while time.monotonic() < deadline and not stop.is_set():
            request = requests[(index + count) % len(requests)]
            count += 1
            bad = count % BAD_EVERY == 0
            begun = time.perf_counter()
            try:
                if bad:
                    client.infer(request.name, _malformed(request, grpc, count // BAD_EVERY),
                                 client_timeout=REQUEST_TIMEOUT_S)
                    outcome, detail = "accepted", ""
                else:
                    check = request.check(request.infer(client))
                    outcome, detail = ("right", "") if check.ok else ("wrong", check.detail)
            except Exception as exc:  # Triton's refusal or a failure, classified here
                outcome, detail = ("refused", "") if bad else ("failed", str(exc).splitlines()[0][:200])
            mine.append(Call(time.monotonic() - started, request.name, bad, outcome, time.perf_counter() - begun, detail))
        client.close()
        with lock:
            calls.extend(mine)

    def sampler() -> None:
        while not stop.wait(sample_every_s):
            pid = server_pid()
            memory = memory_mb(pid) if pid else {}
            memory["total"] = sum(memory.values())
            samples.append((time.monotonic() - started, memory))
            if not alive():
                stop.set()

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join(timeout=sample_every_s + 1)
    return _summarise(calls, samples, clients, time.monotonic() - started, alive(), window_s)


def _summarise(calls: list[Call], samples, clients: int, seconds: float, alive: bool, window_s: float) -> SoakResult:
    counts: dict[str, int] = {}
    per_model: dict[str, dict[str, int]] = {}
    for call in calls:
        counts[call.outcome] = counts.get(call.outcome, 0) + 1
        model = per_model.setdefault(call.model, {})
        model[call.outcome] = model.get(call.outcome, 0) + 1
    windows = []
    for start in np.arange(0.0, max(seconds, window_s), window_s):
        good = [c.seconds * 1000 for c in calls if not c.bad and c.outcome == "right" and start <= c.at < start + window_s]
        if good:
            p50, p95, p99 = np.percentile(good, [50, 95, 99])
            windows.append({"start_s": float(start), "requests": len(good), "p50_ms": float(p50), "p95_ms": float(p95),
                            "p99_ms": float(p99)})
    labels = sorted({label for _, memory in samples for label in memory})
    memory = {label: [m.get(label, 0.0) for _, m in samples] for label in labels}
    times = [t for t, _ in samples]
    problems = [f"{c.model}: {c.outcome}: {c.detail}" for c in calls if c.outcome in ("wrong", "failed", "accepted")][:5]
    return SoakResult(clients, seconds, counts, per_model, windows, memory, times,
                      {label: memory_rise(times, values) for label, values in memory.items()}, alive, problems)


def write_report(result: SoakResult, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "soak.json"
    path.write_text(json.dumps(dict(asdict(result), memory_judged=result.memory_judged, failures=result.failures),
                               indent=2) + "\n")
    try:
        return [path, plot(result, out_dir)]
    except ImportError:  # no matplotlib: the JSON has every figure
        return [path]


def plot(result: SoakResult, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for label, values in result.memory.items():
        left.plot(result.memory_times, values, "-", label=label, linewidth=2.5 if label == "total" else 1)
    left.set(xlabel="seconds", ylabel="resident MB", title="memory (tritonserver and model processes)")
    left.legend(fontsize=7)
    starts = [w["start_s"] for w in result.latency_windows]
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        right.plot(starts, [w[key] for w in result.latency_windows], "-o", label=key)
    right.set(xlabel="seconds", ylabel="ms", title=f"latency of good requests, {result.clients} clients")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    path = out_dir / "soak.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
