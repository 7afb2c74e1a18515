"""One validated settings object for a conversion, built from the command line."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from converters.batching import BatchPlan
from converters.errors import UserError
from converters.io_config import IOConfig
from converters.triton_config import InstancePlan

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
               "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


def parse_size(text: str, flag: str = "--memory-pool-limit") -> int:
    """Bytes from `1073741824`, `1 << 30` (the original's own example form) or `4GiB`."""
    raw = str(text).strip()
    shift = re.fullmatch(r"(\d+)\s*<<\s*(\d+)", raw)
    if shift:
        value = int(shift.group(1)) << int(shift.group(2))
    else:
        unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", raw)
        if not unit or unit.group(2).lower() not in _SIZE_UNITS:
            raise UserError(f"{flag} must be bytes, 'N << K' or a size like 4GiB, got '{text}'.")
        value = int(float(unit.group(1)) * _SIZE_UNITS[unit.group(2).lower()])
    if value <= 0:
        raise UserError(f"{flag} must be positive, got '{text}'.")
    return value


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise UserError(f"{flag} must be a comma-separated list of integers, got '{text}'.") from None
    if not values:
        raise UserError(f"{flag} is empty.")
    return values


@dataclass(frozen=True)
class ConversionSettings:
    ckpt_path: Path
    model_script_path: Path
    model_class_name: str
    model_name: str
    io: IOConfig
    plan: BatchPlan
    onnx_path: Path
    engine_path: Path
    triton_repo: Path
    triton_inputs: tuple[str, ...] | None
    device: str = "cpu"
    generate_onnx: bool = False
    generate_trt: bool = False
    generate_triton_config: bool = False
    overwrite: bool = False
    force: bool = False
    dynamic_batching: bool = False
    max_queue_delay_us: int = 100
    memory_pool_limit: int = 1 << 30
    use_fp16: bool = False
    use_int8: bool = False
    use_fp8: bool = False  # python_compiled on FP8 tensor cores (converters/fp8.py); implies fp16 elsewhere
    calibration_data: Path | None = None
    calibration_cache: Path | None = None
    serve_backend: str = "auto"
    instances: InstancePlan = field(default_factory=InstancePlan)
    warmup: bool = False
    opset: int = 17
    accept_check_failure: bool = False
    demo: bool = False
    pad_sequence: bool = False  # zeros on the variable axes change no answer (a token mask): python_compiled buckets them
    gpu_types: tuple[str, ...] = ()  # compute capabilities to build one engine each for; () = the visible GPUs' types

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name):
            raise UserError(f"--model-name '{self.model_name}' may hold only letters, digits, '_', '-' and '.'.")
        if not (self.generate_onnx or self.generate_trt or self.generate_triton_config):
            raise UserError("nothing to do: pass --generate-onnx, --generate-trt and/or --generate-triton-config.")
        if self.use_fp8 and self.use_int8:
            raise UserError("--use-fp8 and --use-int8 exclude each other: choose one.")
        if self.calibration_data is not None and not self.calibration_data.is_file():
            raise UserError(f"--calibration-data {self.calibration_data} does not exist.")
        if not 7 <= self.opset <= 20:  # what torch's TorchScript exporter (dynamo=False, export.py) writes
            raise UserError(f"--opset {self.opset} is outside what the ONNX exporter writes (7 to 20); use 17, the default.")
        if self.max_queue_delay_us < 0:
            raise UserError(f"--max-queue-delay must be >= 0 microseconds, got {self.max_queue_delay_us}.")
        # Where the outputs go is checked before any work, not after an export of minutes.
        for flag, path in (("--onnx-path", self.onnx_path), ("--engine-path", self.engine_path)):
            if path is not None and (path.is_dir() or _blocked_by_a_file(path.parent)):
                raise UserError(f"{flag} {path} cannot be written: it is a folder, or a file stands where a folder of "
                                "its path should be; choose another path.")
        if self.triton_repo is not None and (self.triton_repo.is_file() or _blocked_by_a_file(self.triton_repo)):
            raise UserError(f"--triton-repo {self.triton_repo} is a file, or a file stands in its path; name a folder.")

    def manifest_settings(self) -> dict:
        """The settings that change what gets built (paths excluded)."""
        return {
            "model_class_name": self.model_class_name, "triton_inputs": list(self.triton_inputs) if self.triton_inputs else None,
            "max_batch_size": self.plan.max_batch_size, "opt_batch_size": self.plan.opt_batch_size,
            "sequence_length": self.plan.sequence_length, "preferred_batch_sizes": list(self.plan.preferred_batch_sizes),
            "dynamic_batching": self.dynamic_batching, "max_queue_delay_us": self.max_queue_delay_us,
            "memory_pool_limit": self.memory_pool_limit, "use_fp16": self.use_fp16, "use_int8": self.use_int8,
            **({"use_fp8": True} if self.use_fp8 else {}),  # absent when off: no rebuild of what was built before
            "instances": [self.instances.count, self.instances.kind, list(self.instances.gpus)],
            "warmup": self.warmup, "opset": self.opset, "device": self.device, "generate_trt": self.generate_trt,
            "pad_sequence": self.pad_sequence, "gpu_types": list(self.gpu_types),
        }


def _blocked_by_a_file(folder: Path) -> bool:
    """Whether `folder` or one of its parents is an existing file (so that the folder cannot be made)."""
    return any(part.is_file() for part in (Path(folder), *Path(folder).parents))
