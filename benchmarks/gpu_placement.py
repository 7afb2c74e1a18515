"""Which GPU each model process uses: nvidia-smi's compute processes, named by the model their
python-backend stub serves. `python -m benchmarks.gpu_placement` prints a table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.processes import stub_model


def nvidia_smi_query(fields: str, what: str) -> list[list[str]]:
    done = subprocess.run(["nvidia-smi", f"--query-{what}={fields}", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, check=True, timeout=10)  # a hung driver stops no sampler
    return [[part.strip() for part in line.split(",")] for line in done.stdout.strip().splitlines() if line.strip()]


def placement() -> list[tuple[str, int, int, float]]:
    """(model, pid, GPU index, MiB) per process on a GPU."""
    index_of = {uuid: int(index) for index, uuid in nvidia_smi_query("index,uuid", "gpu")}
    rows = []
    for pid, uuid, used in nvidia_smi_query("pid,gpu_uuid,used_memory", "compute-apps"):
        try:
            name = stub_model(int(pid)) or Path(f"/proc/{pid}/exe").resolve().name
            rows.append((name, int(pid), index_of.get(uuid, -1), float(used)))
        except (FileNotFoundError, ValueError):
            continue
    return sorted(rows)


if __name__ == "__main__":
    print(f"{'model process':<24} {'pid':>8} {'GPU':>4} {'MiB':>8}")
    for model, pid, gpu, used in placement():
        print(f"{model:<24} {pid:>8} {gpu:>4} {used:>8.0f}")
    sys.exit(0)
