"""How busy the host's CPUs and the GPU are while something runs: one line a second until stopped
(SIGTERM or Ctrl-C), then the means and the CPU seconds each kind of process used. It tells a
run bound by the host (every core busy, the GPU idle part of the time) from one bound by the GPU,
and, if the host, which processes. CPU from /proc; the GPU's utilization.gpu (the share of the
second with a kernel running) and utilization.memory from nvidia-smi.

    python -m benchmarks.host_load OUT_FILE
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu_placement import nvidia_smi_query
from scripts.processes import stub_model


def cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies of each core."""
    cores = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            cores.append((sum(values) - idle, sum(values)))
    return cores


def busy_percent(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[float]:
    return [100.0 * (b1 - b0) / max(t1 - t0, 1) for (b0, t0), (b1, t1) in zip(before, after)]


def process_label(pid: str) -> str:
    """What a process is, for the CPU-seconds table: a Triton python stub by its model, a spawned
    worker (the ingest's rasterisers), or its command name."""
    model = stub_model(int(pid))
    if model:
        return f"python stub: {model}"
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    command = Path(args[0]).name if args and args[0] else "?"
    if any("spawn_main" in a or "multiprocessing" in a for a in args):
        return "python: spawned worker"
    if command.startswith("python") and len(args) > 2 and args[1] == "-m":
        return f"python -m {args[2]}" + (f" {args[3]}" if len(args) > 3 and not args[3].startswith("-") else "")
    return command


def process_ticks() -> dict[str, tuple[int, int]]:
    """pid -> (user + system clock ticks, start time in ticks since boot)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                found[entry.name] = (int(fields[11]) + int(fields[12]), int(fields[19]))
            except (OSError, IndexError, ValueError):
                continue
    return found


class ProcessCpu:
    """CPU seconds each kind of process used since this was made (processes that ended count up to
    their last sample)."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK")
        self.since = float(Path("/proc/uptime").read_text().split()[0]) * self.hz
        self.first = {pid: ticks for pid, (ticks, _) in process_ticks().items()}  # the baseline of each process
        self.last: dict[str, int] = {}
        self.labels: dict[str, str] = {}

    def sample(self) -> None:
        for pid, (ticks, started) in process_ticks().items():
            if pid not in self.first:
                self.first[pid] = 0 if started >= self.since else ticks
            self.last[pid] = ticks
            if pid not in self.labels:
                self.labels[pid] = process_label(pid)

    def seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for pid, ticks in self.last.items():
            used = (ticks - self.first[pid]) / self.hz
            if used > 0:
                label = self.labels[pid]
                totals[label] = totals.get(label, 0.0) + used
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


def gpu_utilization() -> tuple[float, float]:
    """(kernel time %, memory %) of the first GPU, or (nan, nan) without nvidia-smi."""
    try:
        kernel, memory = nvidia_smi_query("utilization.gpu,utilization.memory", "gpu")[0][:2]
        return float(kernel), float(memory)
    except (OSError, IndexError, ValueError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return float("nan"), float("nan")


def main(out: Path) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    rows = []
    with out.open("w") as file:
        file.write("time      cpu %  busiest core %  cores over 90 %  gpu kernel %  gpu memory %\n")
        before, processes = cpu_times(), ProcessCpu()
        try:
            while not stop:
                time.sleep(1.0)
                after = cpu_times()
                cores = busy_percent(before, after)
                before = after
                processes.sample()
                kernel, memory = gpu_utilization()
                row = (sum(cores) / len(cores), max(cores), sum(c > 90 for c in cores), kernel, memory)
                rows.append(row)
                file.write(f"{time.strftime('%H:%M:%S')}  {row[0]:5.1f}  {row[1]:14.1f}  {row[2]:15d}  "
                           f"{kernel:12.0f}  {memory:12.0f}\n")
                file.flush()
        except KeyboardInterrupt:
            pass
        if rows:
            means = [sum(r[i] for r in rows) / len(rows) for i in range(5)]
            file.write(f"mean over {len(rows)} s, {len(before)} cores: cpu {means[0]:.1f} %, busiest core {means[1]:.1f} %, "
                       f"{means[2]:.1f} cores over 90 %, gpu kernel {means[3]:.0f} %, gpu memory {means[4]:.0f} %\n")
            file.write("CPU seconds by process over that time:\n")
            for label, seconds in processes.seconds().items():
                if seconds >= 0.05:
                    file.write(f"  {seconds:8.2f}  {label}\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
