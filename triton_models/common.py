"""What every model builder shares: its options, and publishing python-backend companions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from converters.batching import BatchPlan
from converters.io_config import parse_io_config
from converters.manifest import file_sha256, fingerprint, gpu_identity, tool_versions
from converters.model_folder import Golden, Manifest, current_manifest, publish
from converters.runners import MODEL_SUPPORT, MODEL_SUPPORT_FILE
from converters.conversion_settings import ConversionSettings
from converters.errors import UserError
from converters.triton_config import InstancePlan, companion_config, config_text


@dataclass(frozen=True)
class BuildOptions:
    """One validated set of options for one model's build (from the CLI or the stack's settings)."""
    checkpoint: Path
    repo: Path
    work_dir: Path
    max_batch_size: int
    precision: str = "fp16"  # fp16 | fp32 | fp8: the engine's (fp8: python_compiled, else fp16); python_onnx computes in fp32
    serve_backend: str = "auto"
    device: str = "cpu"
    instance_count: int = 1
    gpus: tuple[int, ...] = ()
    gpu_types: tuple[str, ...] = ()  # engines: one per compute capability; () = one per visible GPU type
    force: bool = False
    demo: bool = False
    extra: dict = field(default_factory=dict)  # model-specific options (e.g. caption folds)

    def number(self, key: str, default: float, low: float, high: float, kind: type = float) -> float:
        """A model-specific `--option key=value` as a number within [low, high], or one sentence saying why not."""
        text = self.extra.get(key)
        if text is None:
            return kind(default)
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise UserError(f"--option {key}={text} must be {'a whole number' if kind is int else 'a number'} "
                            f"from {low:g} to {high:g} (default {default:g}).")
        return value


def conversion_settings(options: BuildOptions, *, name: str, io_json: str, script: Path, class_name: str,
                        sequence_length: int, opt_batch: int | None = None, ckpt_path: Path | None = None,
                        triton_inputs: tuple[str, ...] | None = None, pad_sequence: bool = False,
                        fp8_capable: bool = False) -> ConversionSettings:
    """The converter's settings for a model core, derived from the build options. An engine is
    built only where it may be served (`auto`, `tensorrt_plan`): a python_onnx or python_torch
    build has no use for one. `fp8_capable`: a transformer core whose linear layers may go to FP8
    where `--precision fp8` asks; the other cores (YOLOX's convolutions) build in fp16 then."""
    work = options.work_dir / name
    return ConversionSettings(
        ckpt_path=ckpt_path or options.checkpoint, model_script_path=script, model_class_name=class_name, model_name=name,
        io=parse_io_config(io_json), plan=BatchPlan.create(options.max_batch_size, (opt_batch, sequence_length), None),
        onnx_path=work / "model.onnx", engine_path=work / "model.plan", triton_repo=options.repo, triton_inputs=triton_inputs,
        device=options.device, generate_onnx=True, generate_trt=options.serve_backend in ("auto", "tensorrt_plan"),
        generate_triton_config=True, overwrite=True,
        force=options.force, dynamic_batching=True, max_queue_delay_us=CORE_QUEUE_DELAY_US, use_fp16=options.precision in ("fp16", "fp8"),
        use_fp8=options.precision == "fp8" and fp8_capable,
        serve_backend=options.serve_backend,
        instances=InstancePlan(options.instance_count, "auto", options.gpus), demo=options.demo, pad_sequence=pad_sequence,
        gpu_types=options.gpu_types)


TOKENIZER_FILE = "tokenizer.json"

# Dynamic batching delays. A core model's requests come from its companion, which already sends
# whole batches (one BLS call per execute), so the core waits only briefly for another one. A
# companion's requests come one item each from clients; waiting 1 ms gathers them into one
# tokenizer call and one core request, which costs far less than a core call per item.
CORE_QUEUE_DELAY_US = 100
COMPANION_QUEUE_DELAY_US = 1000


def serving_tokenizer(folder: Path, max_length: int, pad_to_max_length: bool) -> str:
    """The checkpoint's tokenizer as one `tokenizer.json` with its truncation and padding set, so
    that a python model tokenizes exactly as `AutoTokenizer(..., truncation=True, padding=...)`
    does, with the `tokenizers` library alone: no transformers (nor SciPy, nor a second NumPy
    dependency) inside the server."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not hf.is_fast:
        raise UserError(f"the tokenizer in {folder} has no fast (Rust) form; add its tokenizer.json.")
    if hf.pad_token is None:
        raise UserError(f"the tokenizer in {folder} has no pad token; set pad_token in its tokenizer_config.json.")
    backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())  # a copy: the settings below are ours
    backend.enable_truncation(max_length, direction=hf.truncation_side)
    backend.enable_padding(direction=hf.padding_side, pad_id=hf.pad_token_id, pad_type_id=hf.pad_token_type_id,
                           pad_token=hf.pad_token, length=max_length if pad_to_max_length else None)
    return backend.to_str()


def gpu_placement(options: BuildOptions) -> tuple[int, dict[str, str]]:
    """A python model on GPUs (CPU instances that drive them): `instance_count` per GPU of
    `--gpus`, and the `devices` parameter they take in turn (model_support.ModelArgs.device)."""
    if options.device != "cuda" or not options.gpus:
        return options.instance_count, {}
    return options.instance_count * len(options.gpus), {"devices": ",".join(f"cuda:{g}" for g in options.gpus)}


def tensor(name: str, dtype: str, dims: list[int], optional: bool = False) -> dict:
    return {"name": name, "data_type": dtype, "dims": dims, "optional": optional}


def python_model_config(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                        parameters: dict[str, str] | None = None, **options) -> pb.ModelConfig:
    """A companion's config, through converters/triton_config.py, with the companions' queue delay."""
    return companion_config(name, inputs, outputs, max_batch_size, queue_delay_us=COMPANION_QUEUE_DELAY_US,
                            parameters=parameters, **options)


def core_fingerprint(core) -> str:
    """The core model's manifest fingerprint: a companion's golden answers depend on it."""
    manifest = Manifest.read(core.model_dir) if core.model_dir else None
    return manifest.fingerprint if manifest else ""


def companion_is_current(repo: Path, config: pb.ModelConfig, sources: dict[str, str], force: bool = False) -> bool:
    """True when `<repo>/<name>/` was published from these sources and this config (skip the work)."""
    return not force and current_manifest(Path(repo) / config.name, _companion_key(config, sources)) is not None


def _companion_key(config: pb.ModelConfig, sources: dict[str, str]) -> str:
    sources = {**sources, "model_support": file_sha256(MODEL_SUPPORT)}
    return fingerprint(sources, {"config": config_text(config)}, tool_versions(), gpu_identity(), "python")


def publish_python_model(repo: Path, config: pb.ModelConfig, model_py: Path, *, sources: dict[str, str],
                         golden: Golden, files: dict[str, Path | bytes | str] | None = None, demo: bool = False,
                         precision: str = "fp32") -> Path:
    """Publish `<repo>/<name>/`: config, 1/model.py, extra files, golden answers and manifest
    (`precision`: what the model computes in as served, shown by `status`)."""
    content: dict[str, Path | bytes | str] = {"1/model.py": model_py, MODEL_SUPPORT_FILE: MODEL_SUPPORT, **(files or {})}
    manifest = Manifest(model=config.name, fingerprint=_companion_key(config, sources), serve_backend="python",
                        precision=precision, demo=demo, sources=sources, versions=tool_versions(), gpu=gpu_identity())
    return publish(repo, config.name, config_text(config), manifest, golden, content)
