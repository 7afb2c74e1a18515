"""The host's GPUs (from nvidia-smi) and the GPUs the builders see: a TensorRT engine runs only
on the compute capability it was built for, so the builders get one GPU of every type that
TRITON_GPU_IDS serves from and build one engine per type (`converters.engine_targets`)."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from converters.errors import UserError

# GPU ids in the settings are nvidia-smi's indices, which follow the PCI bus. CUDA numbers the GPUs
# fastest first unless told otherwise, so on a host of mixed GPUs its cuda:1 could be another card:
# every process that takes GPU ids from the settings (the local Triton and builders; compose's GPU
# services, through the generated override) runs with this.
GPU_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


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


def builder_gpu_ids(gpus: list[Gpu], builder_ids: str, triton_ids: str) -> str:
    """The GPUs the builders see: BUILDER_GPU_ID, plus one GPU of each further type in
    TRITON_GPU_IDS, so that they build one engine per type the server runs on (a TensorRT engine
    runs only on the type it was built for). GPU ids the host lacks are refused in one sentence."""
    by_index = {gpu.index: gpu for gpu in gpus}
    for key, value in (("BUILDER_GPU_ID", builder_ids), ("TRITON_GPU_IDS", triton_ids)):
        missing = [int(i) for i in value.split(",") if i and int(i) not in by_index]
        if missing:
            raise UserError(f"{key}={value} names GPU {missing[0]}, but this host has GPUs "
                            f"{', '.join(str(i) for i in sorted(by_index))}; set {key} in .env to GPUs it has.")
    chosen = [by_index[int(i)] for i in builder_ids.split(",") if i]
    for index in (int(i) for i in triton_ids.split(",") if i):
        if by_index[index].compute_capability not in {gpu.compute_capability for gpu in chosen}:
            chosen.append(by_index[index])
    return ",".join(str(gpu.index) for gpu in chosen)
