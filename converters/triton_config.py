"""Triton `config.pbtxt`, written through Triton's own protobuf schema so it is always valid."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from converters.batching import BatchPlan
from converters.errors import UserError
from converters.io_config import IOConfig, TensorSpec
from converters.serve_backends import SERVE_BACKENDS, serve_backend


@dataclass(frozen=True)
class InstancePlan:
    count: int = 1
    kind: str = "auto"  # KIND_GPU | KIND_CPU | auto (GPU for engines and --device cuda, else CPU)
    gpus: tuple[int, ...] = ()  # empty: every visible GPU

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UserError(f"--instance-count must be at least 1, got {self.count}.")
        if self.kind not in ("KIND_GPU", "KIND_CPU", "auto"):
            raise UserError(f"--instance-kind must be KIND_GPU, KIND_CPU or auto, got {self.kind}.")
        if self.kind == "KIND_CPU" and self.gpus:
            raise UserError("--instance-gpus makes no sense with --instance-kind KIND_CPU.")


@dataclass(frozen=True)
class TritonModelConfig:
    name: str
    serve_backend: str
    io: IOConfig
    triton_inputs: tuple[str, ...]
    plan: BatchPlan
    dynamic_batching: bool
    max_queue_delay_us: int
    instances: InstancePlan = field(default_factory=InstancePlan)
    warmup: bool = False
    parameters: dict[str, str] = field(default_factory=dict)
    cc_model_filenames: dict[str, str] = field(default_factory=dict)  # GPU type -> engine file (one per type built)


def _dims(spec: TensorSpec) -> list[int]:
    return list(spec.shape)


def build_config(cfg: TritonModelConfig) -> pb.ModelConfig:
    backend = serve_backend(cfg.serve_backend)
    if cfg.max_queue_delay_us < 0:
        raise UserError(f"--max-queue-delay must be >= 0 microseconds, got {cfg.max_queue_delay_us}.")
    config = pb.ModelConfig(name=cfg.name, max_batch_size=cfg.plan.max_batch_size)
    if backend.platform:
        config.platform = backend.platform
    else:
        config.backend = backend.backend
    for name in cfg.triton_inputs:
        spec = cfg.io.input(name)
        config.input.append(pb.ModelInput(name=name, data_type=pb.DataType.Value(spec.triton_dtype), dims=_dims(spec)))
    for spec in cfg.io.outputs:
        config.output.append(pb.ModelOutput(name=spec.name, data_type=pb.DataType.Value(spec.triton_dtype), dims=_dims(spec)))
    if cfg.dynamic_batching:
        config.dynamic_batching.preferred_batch_size.extend(cfg.plan.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    kind = "KIND_GPU" if cfg.instances.kind == "auto" else cfg.instances.kind
    group = pb.ModelInstanceGroup(count=cfg.instances.count, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    group.gpus.extend(cfg.instances.gpus)
    config.instance_group.append(group)
    if cfg.warmup:
        warmup = pb.ModelWarmup(name="random_sample", batch_size=cfg.plan.opt_batch_size, count=1)
        for name in cfg.triton_inputs:
            spec = cfg.io.input(name)
            dims = list(cfg.plan.sample_shape(spec)[1:])
            warmup.inputs[name].CopyFrom(pb.ModelWarmup.Input(
                data_type=pb.DataType.Value(spec.triton_dtype), dims=dims, zero_data=True))
        config.model_warmup.append(warmup)
    for key, value in cfg.parameters.items():
        config.parameters[key].string_value = value
    for capability, file in cfg.cc_model_filenames.items():
        config.cc_model_filenames[capability] = file
    return config


def companion_config(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int, *,
                     queue_delay_us: int, parameters: dict[str, str] | None = None, dynamic_batching: bool = True,
                     instance_count: int = 1, kind: str = "KIND_CPU", gpus: tuple[int, ...] = ()) -> pb.ModelConfig:
    """A companion's config (serve backend `python`: its own model.py), written through Triton's schema."""
    config = pb.ModelConfig(name=name, backend=SERVE_BACKENDS["python"].backend, max_batch_size=max_batch_size)
    for spec in inputs:
        config.input.append(pb.ModelInput(name=spec["name"], data_type=pb.DataType.Value(spec["data_type"]),
                                          dims=spec["dims"], optional=spec["optional"]))
    for spec in outputs:
        config.output.append(pb.ModelOutput(name=spec["name"], data_type=pb.DataType.Value(spec["data_type"]), dims=spec["dims"]))
    if dynamic_batching and max_batch_size > 0:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    group = pb.ModelInstanceGroup(count=instance_count, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    if kind == "KIND_GPU":
        group.gpus.extend(gpus)
    config.instance_group.append(group)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return config


def config_text(config: pb.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(text: str, source: str = "config.pbtxt") -> pb.ModelConfig:
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise UserError(f"{source} is not a valid Triton model config: {exc}") from None


def read_config(path: Path) -> pb.ModelConfig:
    return parse_config(Path(path).read_text(), str(path))


def check_config_fits_profile(config: pb.ModelConfig, profiles: dict[str, tuple[tuple[int, ...], ...]]) -> None:
    """Triton must never ask the engine for a shape outside its optimization profile."""
    max_batch = config.max_batch_size
    for model_input in config.input:
        if model_input.name not in profiles:
            raise UserError(f"config input '{model_input.name}' of model '{config.name}' is not an input of the engine.")
        low, _, high = profiles[model_input.name]
        if max_batch > high[0] or low[0] > 1:
            raise UserError(
                f"model '{config.name}': max_batch_size {max_batch} exceeds the engine profile batch "
                f"{low[0]}..{high[0]} of input '{model_input.name}'."
            )
        for i, dim in enumerate(model_input.dims):
            lo, hi = low[i + 1], high[i + 1]
            if dim != -1 and not lo <= dim <= hi:
                raise UserError(f"model '{config.name}': input '{model_input.name}' dim {i} = {dim} is outside the profile {lo}..{hi}.")
    for size in config.dynamic_batching.preferred_batch_size:
        if size > max_batch:
            raise UserError(f"model '{config.name}': preferred batch size {size} exceeds max_batch_size {max_batch}.")
