"""The host's GPUs (from nvidia-smi) and the check that engines are built for the GPUs that
serve them: a TensorRT engine runs only on the compute capability it was built for, and the
builders build on BUILDER_GPU_ID alone, so every GPU in TRITON_GPU_IDS must be of its type."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from converters.errors import UserError


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: str


def parse_gpus(text: str) -> list[Gpu]:
    """`nvidia-smi --query-gpu=index,name,compute_cap --format=csv,noheader` output."""
    gpus = []
    for line in text.strip().splitlines():
        index, rest = line.split(",", 1)
        name, capability = rest.rsplit(",", 1)
        gpus.append(Gpu(int(index), name.strip(), capability.strip()))
    return gpus


def host_gpus() -> list[Gpu] | None:
    """This host's GPUs, or None where nvidia-smi is absent or fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=index,name,compute_cap", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    return parse_gpus(done.stdout) if done.returncode == 0 else None


def check_engine_gpus(gpus: list[Gpu], builder_ids: str, triton_ids: str) -> None:
    """Refuse, in one sentence, GPU ids the host lacks and serving GPUs of another type than the
    builder's (their engines would not load)."""
    by_index = {gpu.index: gpu for gpu in gpus}
    for key, value in (("BUILDER_GPU_ID", builder_ids), ("TRITON_GPU_IDS", triton_ids)):
        missing = [int(i) for i in value.split(",") if i and int(i) not in by_index]
        if missing:
            raise UserError(f"{key}={value} names GPU {missing[0]}, but this host has GPUs "
                            f"{', '.join(str(i) for i in sorted(by_index))}; set {key} in .env to GPUs it has.")
    builder = by_index[int(builder_ids.split(",")[0])]
    other = [by_index[int(i)] for i in triton_ids.split(",") if i and
             by_index[int(i)].compute_capability != builder.compute_capability]
    if other:
        raise UserError(f"TRITON_GPU_IDS={triton_ids} includes GPU {other[0].index} ({other[0].name}, compute capability "
                        f"{other[0].compute_capability}) but the engines are built on BUILDER_GPU_ID={builder.index} "
                        f"({builder.name}, {builder.compute_capability}), and a TensorRT engine runs only on the GPU "
                        "type it was built for; serve from GPUs of the builder's type.")
