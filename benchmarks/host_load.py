"""How busy the host's CPUs and the GPU are while something runs: one line a second until stopped
(SIGTERM or Ctrl-C), then the means. It tells a run bound by the host (every core busy, the GPU
idle part of the time) from one bound by the GPU. CPU from /proc/stat; the GPU's
utilization.gpu (the share of the second with a kernel running) and utilization.memory from nvidia-smi.

    python -m benchmarks.host_load OUT_FILE
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


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


def gpu_utilization() -> tuple[float, float]:
    """(kernel time %, memory %) of GPU 0, or (nan, nan) without nvidia-smi."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,utilization.memory",
                               "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True, timeout=5)
        kernel, memory = done.stdout.strip().split(",")[:2]
        return float(kernel), float(memory)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return float("nan"), float("nan")


def main(out: Path) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    rows = []
    with out.open("w") as file:
        file.write("time      cpu %  busiest core %  cores over 90 %  gpu kernel %  gpu memory %\n")
        before = cpu_times()
        try:
            while not stop:
                time.sleep(1.0)
                after = cpu_times()
                cores = busy_percent(before, after)
                before = after
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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
