"""The stack's settings: read once from `.env` (python-dotenv), validated all at once.

Every key, its type and default lives in `KEYS`; the per-model keys (checkpoint, batch size) and
their defaults are derived from the model registry (`triton_models/registry.py`), so no second
list of models exists. `.env.example` is generated from `KEYS` (a test keeps the two in step). An unknown key, a bad number or a missing checkpoint path are listed
together and nothing starts.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from converters.errors import UserError
from converters.serve_backends import LOCAL_SERVE_BACKENDS
from triton_models.builder_contract import DEVICES, builder_settings
from triton_models.registry import MODELS, get


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # int | port | str | path | repository_dir | relative_dir | gpu_ids | model_gpu_ids | choice:<a>|<b> | models | checkpoint | overlay_checkpoint
    default: str
    help: str
    example: str | None = None  # what .env.example shows where it differs from the default
    chart: bool = False  # also a setting of the Helm chart (deploy/helm/doc-triton/settings.yaml)


KEYS: tuple[Key, ...] = (
    Key("COMPOSE_FILE", "str", "docker-compose.yaml",
        "compose files: GPU hosts add docker-compose.gpu.yaml; docker-compose.yaml alone is the CPU profile",
        example="docker-compose.yaml:docker-compose.gpu.yaml"),
    Key("COMPOSE_PROJECT_NAME", "str", "doc-triton", "compose project name (prefix of containers and the volume)"),
    Key("TRITON_BASE_IMAGE", "str", "", "NVIDIA's tritonserver image (NGC, e.g. release 25.01-py3) for the server and builders"),
    Key("TRTLLM_BASE_IMAGE", "str", "", "NVIDIA's Triton TensorRT-LLM image (NGC, e.g. 25.01-trtllm-python-py3) for ECLAIR"),
    Key("PIP_OFFLINE", "choice:0|1", "0", "1: images install only from docker/wheels (CI fetches them first)"),
    Key("TRITON_BIND_ADDRESS", "str", "127.0.0.1", "address the Triton ports are published on"),
    Key("TRITON_HTTP_PORT", "port", "8000", "Triton HTTP port on the host"),
    Key("TRITON_GRPC_PORT", "port", "8001", "Triton gRPC port on the host"),
    Key("TRITON_METRICS_PORT", "port", "8002", "Triton metrics port on the host"),
    Key("EMBEDDINGS_HTTP_PORT", "port", "8003",
        "port of the OpenAI-compatible /v1/embeddings endpoint in front of e5_small_v2_text (served with e5_small_v2)"),
    Key("TRITON_GPU_IDS", "gpu_ids", "0", "GPUs the Triton service reserves (comma list)"),
    Key("BUILDER_GPU_ID", "gpu_ids", "0", "GPU the builders build on"),
    Key("TRITON_SHM_SIZE", "str", "2gb", "shared memory of the Triton container (python backend tensors; each "
        "yolox_page_elements instance keeps about 8 MB a page of YOLOX_BATCH_SIZE)"),
    Key("PRECISION", "choice:fp16|fp32|fp8", "fp16",
        "engine precision; fp8: DeBERTa-large on FP8 tensor cores in the compiled path (LOCAL_SERVE_BACKEND="
        "python_compiled, LOCAL_DEVICE=cuda, compute capability 8.9+), the other models in fp16", chart=True),
    Key("INSTANCE_COUNT", "int", "1", "model instances per GPU (or on CPU); caption_selection gets 4 per deberta_large instance, yolox_page_elements at least 4; "
        "ECLAIR's graph decoder always one (its ECLAIR_BATCH_SIZE slots batch the pages)", chart=True),
    Key("MODELS", "models", ",".join(m.key for m in MODELS), "which models to build and serve (comma list)", chart=True),
    *(Key(spec.batch_size_key, "int", str(spec.default_batch_size), f"max batch of {spec.core}{spec.batch_help}",
          chart=True) for spec in MODELS),
    *(Key(spec.gpu_ids_key, "model_gpu_ids", "", f"GPUs of TRITON_GPU_IDS that serve {spec.key} (comma list; "
          "compose and local stacks); empty: all of them" + spec.gpu_ids_help) for spec in MODELS),
    Key("CHECKPOINTS_DIR", "path", "./checkpoints", "host folder mounted read-only at /checkpoints in the builders"),
    *(Key(spec.checkpoint_key, "checkpoint", "", spec.checkpoint_help, chart=True) for spec in MODELS),
    Key("ECLAIR_COMPILE_ENCODER", "choice:on|off", "on",
        "on a GPU, ECLAIR's vision encoder is compiled before it is captured per bucket (about 1.7x faster a page; "
        "minutes of compiling at build and again at load); off: captured only, for a quick start", chart=True),
    Key("ECLAIR_RUNTIME", "choice:pytorch|tensorrt_llm", "pytorch",
        "how `eclair` is served: pytorch (the main stack) or tensorrt_llm (the overlay's engines and triton-eclair; "
        "docker mode on a GPU host)"),
    Key("ECLAIR_CHECKPOINT_DIR", "relative_dir", "./third_party/eclair_triton/checkpoints", "TensorRT-LLM overlay: checkpoints folder (relative to the repository root)"),
    Key("ECLAIR_CHECKPOINT_NAME", "overlay_checkpoint", "", "TensorRT-LLM overlay: checkpoint folder name inside ECLAIR_CHECKPOINT_DIR"),
    Key("ECLAIR_MODEL_DIR", "relative_dir", "./third_party/eclair_triton/models", "TensorRT-LLM overlay: where its engines go (relative to the repository root)"),
    Key("ECLAIR_HTTP_PORT", "port", "8010", "TensorRT-LLM overlay: HTTP port of triton-eclair"),
    Key("LOCAL_SERVE_BACKEND", "choice:" + "|".join(LOCAL_SERVE_BACKENDS), "python_onnx",
        "--local: ONNX Runtime runners, TorchScript on PyTorch, or torch.compile with CUDA graphs "
        "(python_compiled; with LOCAL_DEVICE=cuda: fp16 on a GPU)"),
    Key("LOCAL_DEVICE", "choice:cpu|cuda", "cpu", "--local: where the models run"),
    Key("LOCAL_CUDA_MPS", "choice:off|on", "off",
        "--local on CUDA: run Triton under the stack's own CUDA MPS daemon, so the model processes share each GPU "
        "instead of time-slicing it (E5 at batch 256: +15%; YOLOX-L at batch 16: -16%; docs/compiled-path.md)"),
    Key("LOCAL_MODEL_PYTHONPATH", "str", "",
        "--local: folders put first on the python-backend models' path (the wheel's stub needs NumPy 1)"),
    Key("LOCAL_REPOSITORY", "repository_dir", "build/model_repository", "--local: the model repository folder "
        "(work/ and local/ go beside it; `clean` deletes only the folders the stack made)"),
    Key("READY_TIMEOUT_S", "int", "600", "how long `up` waits for Triton and every model", chart=True),
    Key("HELM_RELEASE", "str", "doc-triton", "--mode kubernetes: the Helm release (and prefix of its objects)"),
    Key("KUBE_NAMESPACE", "str", "default", "--mode kubernetes: the namespace it is installed in"),
    Key("HELM_VALUES", "str", "",
        "--mode kubernetes: a values file of your own (images, GPUs, replicas, storage); empty: the chart's defaults"),
)
KEY_NAMES = {k.name for k in KEYS}


@dataclass(frozen=True)
class StackSettings:
    values: dict[str, str]
    env_file: Path | None
    root: Path = field(default=Path("."))

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def int(self, name: str) -> int:
        return int(self.values[name])

    def path(self, name: str) -> Path:
        value = Path(self.values[name])
        return value if value.is_absolute() else self.root / value

    @property
    def models(self) -> list[str]:
        """The models the main stack builds and serves (`eclair` on TensorRT-LLM is the overlay's)."""
        return [m for m in self.values["MODELS"].split(",") if m and not (m == "eclair" and self.eclair_on_trtllm)]

    @property
    def eclair_on_trtllm(self) -> bool:
        return self.values["ECLAIR_RUNTIME"] == "tensorrt_llm" and "eclair" in self.values["MODELS"].split(",")

    @property
    def serves_embeddings(self) -> bool:
        """The OpenAI-compatible endpoint runs wherever its model, e5_small_v2, is served."""
        return "e5_small_v2" in self.models

    @property
    def gpu_mode(self) -> bool:
        return "docker-compose.gpu.yaml" in self.values["COMPOSE_FILE"]

    def model_gpu_ids(self, model_key: str) -> str:
        """The host GPUs serving a model: its own <PREFIX>_GPU_IDS, else every GPU of TRITON_GPU_IDS."""
        return self.values[get(model_key).gpu_ids_key] or self.values["TRITON_GPU_IDS"]

    def placed_models(self) -> list[str]:
        """The models given GPUs of their own (<PREFIX>_GPU_IDS set)."""
        return [spec.key for spec in MODELS if self.values[spec.gpu_ids_key]]

    def refuse_placement_without_gpus(self, serves_on_gpus: bool, how_to_serve_on_gpus: str) -> None:
        """<PREFIX>_GPU_IDS with a stack that serves on the CPU would be ignored without a word: refused
        before any build (by the local and compose stacks; Kubernetes refuses the keys outright)."""
        placed = self.placed_models()
        if placed and not serves_on_gpus:
            keys = ", ".join(f"{get(model).gpu_ids_key}={self.values[get(model).gpu_ids_key]}" for model in placed)
            raise UserError(f"{keys} place{'s' if len(placed) == 1 else ''} models on GPUs, but this stack serves on the CPU: "
                            f"{how_to_serve_on_gpus}, or leave {'it' if len(placed) == 1 else 'them'} empty.")

    def checkpoint(self, model_key: str) -> Path | None:
        """The host path of a model's checkpoint, or None for a demo checkpoint."""
        value = self.values[get(model_key).checkpoint_key]
        return self.path("CHECKPOINTS_DIR") / value if value else None

    def compose_environment(self) -> dict[str, str]:
        """What `docker compose` sees: every key, defaults filled in."""
        return dict(self.values)


def _problem(key: Key, value: str, root: Path, values: dict[str, str]) -> str | None:
    kind = key.kind
    if kind in ("int", "port"):
        if not re.fullmatch(r"\d+", value):
            return f"{key.name}={value!r} is not a whole number"
        number = int(value)
        if kind == "port" and not 1 <= number <= 65535:
            return f"{key.name}={value} is not a port (1-65535)"
        if kind == "int" and number < 1:
            return f"{key.name}={value} must be at least 1"
    elif kind == "gpu_ids":
        if not re.fullmatch(r"\d+(,\d+)*", value):
            return f"{key.name}={value!r} must be GPU ids like 0 or 0,1"
    elif kind == "model_gpu_ids" and value:
        if not re.fullmatch(r"\d+(,\d+)*", value):
            return f"{key.name}={value!r} must be GPU ids like 1 or 0,1, or empty for every GPU of TRITON_GPU_IDS"
        reserved = values["TRITON_GPU_IDS"].split(",")
        outside = [gpu for gpu in value.split(",") if gpu not in reserved]
        if outside or len(set(value.split(","))) != len(value.split(",")):
            return (f"{key.name}={value} must name distinct GPUs of TRITON_GPU_IDS={values['TRITON_GPU_IDS']} (the "
                    f"GPUs Triton reserves); add {','.join(outside) or 'them'} there or leave {key.name} empty")
    elif kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split("|")
        if value not in choices:
            return f"{key.name}={value!r} must be one of {', '.join(choices)}"
    elif kind == "models":
        unknown = [m for m in value.split(",") if m and m not in {s.key for s in MODELS}]
        if unknown or not value:
            return f"MODELS={value!r} names unknown models {unknown}; choose from {', '.join(s.key for s in MODELS)}"
    elif kind == "checkpoint" and value:
        base = Path(values["CHECKPOINTS_DIR"])
        path = (base if base.is_absolute() else root / base) / value
        if not path.exists():
            return f"{key.name}={value} does not exist under CHECKPOINTS_DIR ({path}); fix the path or leave it empty for a demo"
    elif kind == "repository_dir":
        folder = (Path(value) if Path(value).is_absolute() else root / value).resolve()
        try:
            home = Path.home().resolve()
        except RuntimeError:  # no HOME and no passwd entry (a container's arbitrary uid)
            home = None
        if not value or folder == folder.parent or folder == home or folder in (root.resolve(), *root.resolve().parents):
            return (f"{key.name}={value!r} is the project, home or root folder (or holds the project); name a folder "
                    "of its own such as build/model_repository")
    elif kind == "relative_dir" and Path(value).is_absolute():
        # the overlay's compose file, used alone (the original's commands), prefixes these with ../..
        return f"{key.name}={value} must be relative to the repository root (e.g. ./third_party/eclair_triton/...)"
    elif kind == "overlay_checkpoint" and value:
        base = Path(values["ECLAIR_CHECKPOINT_DIR"])
        path = (base if base.is_absolute() else root / base) / value
        if not (path / "config.json").is_file():
            return (f"{key.name}={value} names no checkpoint: {path} has no config.json; put the ECLAIR "
                    "VisionEncoderDecoder folder under ECLAIR_CHECKPOINT_DIR or fix the name")
    return None


# the host ports the stack listens on: Triton's three, and the embeddings endpoint's
TRITON_PORT_KEYS = ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")
EMBEDDINGS_PORT_KEY = "EMBEDDINGS_HTTP_PORT"


def load_settings(env_file: Path | None = Path(".env"), root: Path = Path("."), overrides: dict[str, str] | None = None,
                  host_checkpoints: bool = True) -> StackSettings:
    """Read `.env` (if present), fill defaults, validate everything, report all problems at once.
    `host_checkpoints=False` (Kubernetes): checkpoints live on a claim, not under CHECKPOINTS_DIR here."""
    raw: dict[str, str] = {}
    problems: list[str] = []
    if env_file is not None and Path(env_file).is_file():
        try:
            with open(env_file, encoding="utf-8") as stream:  # a line dotenv cannot parse is a problem, not a warning
                problems += [f"line {b.original.line} cannot be read as KEY=value: {b.original.string.strip()!r}"
                             for b in parse_stream(stream) if b.error]
            raw = {k: (v or "") for k, v in dotenv_values(env_file, encoding="utf-8").items()}
        except UnicodeDecodeError:
            raise UserError(f"{env_file} is not UTF-8 text; save it as UTF-8 (.env.example is an example).") from None
    raw.update(overrides or {})
    problems += [f"unknown key {k} (known keys are listed in .env.example)" for k in raw if k not in KEY_NAMES]
    values = {k.name: raw.get(k.name, k.default).strip() for k in KEYS}
    for key in KEYS:
        if key.kind in ("checkpoint", "overlay_checkpoint") and not host_checkpoints:
            continue
        problem = _problem(key, values[key.name], root, values)
        if problem:
            problems.append(problem)
    port_keys = TRITON_PORT_KEYS + (EMBEDDINGS_PORT_KEY,)
    ports = [values[k] for k in port_keys]
    if len(set(ports)) != len(ports):
        problems.append(f"{', '.join(port_keys)} must differ, got {', '.join(ports)}")
    yolox_batch = values[get("yolox").batch_size_key]
    if yolox_batch.isdigit() and int(yolox_batch) & (int(yolox_batch) - 1):
        # nv-ingest's YOLOX client sends batches in powers of two up to the model's max batch
        problems.append(f"{get('yolox').batch_size_key}={yolox_batch} must be a power of two (nv-ingest's YOLOX "
                        "client batches pages in powers of two); use 8 or 16")
    if values["PRECISION"] == "fp8" and (values["LOCAL_SERVE_BACKEND"], values["LOCAL_DEVICE"]) != ("python_compiled", "cuda"):
        problems.append("PRECISION=fp8 runs only in the compiled path on a GPU: set LOCAL_SERVE_BACKEND=python_compiled "
                        "and LOCAL_DEVICE=cuda (local mode), or use PRECISION=fp16")
    if values["ECLAIR_RUNTIME"] == "tensorrt_llm" and "eclair" in values["MODELS"].split(","):
        needs = [name for name in ("TRTLLM_BASE_IMAGE", "ECLAIR_CHECKPOINT_NAME") if not values[name]]
        if needs:
            problems.append(f"ECLAIR_RUNTIME=tensorrt_llm needs {' and '.join(needs)} (the overlay's image and the "
                            "checkpoint folder inside ECLAIR_CHECKPOINT_DIR)")
        if "docker-compose.gpu.yaml" not in values["COMPOSE_FILE"]:
            problems.append("ECLAIR_RUNTIME=tensorrt_llm needs the GPU profile: add docker-compose.gpu.yaml to COMPOSE_FILE")
        if values[get("eclair").gpu_ids_key]:
            problems.append(f"{get('eclair').gpu_ids_key} places the PyTorch runtime's instances; with "
                            "ECLAIR_RUNTIME=tensorrt_llm the overlay's triton-eclair serves ECLAIR: leave it empty")
    if problems:
        where = env_file if env_file is not None and Path(env_file).is_file() else "the settings"
        raise UserError(f"{where} has {len(problems)} problem(s): " + "; ".join(problems) + ".")
    return StackSettings(values, env_file, root)


def env_example_text() -> str:
    """The text of `.env.example`, generated from KEYS so the two never drift."""
    lines = ["# Settings of the stack. Copy to .env and edit. Generated from scripts/stack_settings.py (KEYS);",
             "# `python -m scripts.stack` validates them all at once before anything starts.",
             "# A GPU host needs TRITON_BASE_IMAGE set; everything else has a working default.", ""]
    for key in KEYS:
        lines.append(f"# {key.help}")
        lines.append(f"{key.name}={key.default if key.example is None else key.example}")
    return "\n".join(lines) + "\n"


def chart_settings_text() -> str:
    """The Helm chart's `settings.yaml`: its defaults for the .env keys it uses (`Key.chart`) and the
    models it builds, generated from KEYS and the registry so the chart has no list of its own."""
    lines = ["# Generated from scripts/stack_settings.py (KEYS) and triton_models/registry.py by",
             "# `python -m scripts.stack_settings chart`; a test keeps it in step. Do not edit: override a",
             "# setting under `settings:` in your values (the same keys and meaning as in .env).",
             "settings:"]
    for key in KEYS:
        if key.chart:
            lines += [f"  # {key.help}", f"  {key.name}: {json.dumps(key.default)}"]
    lines.append("models:  # each builder's settings and serve backend: the one builder contract")
    for spec in MODELS:
        lines += [f"  - key: {spec.key}", f"    job: {spec.compose_service}",
                  f"    tritonNames: {json.dumps(list(spec.triton_names))}",
                  f"    builderSettings: {json.dumps(builder_settings(spec))}",
                  f"    serveBackend: {json.dumps({device: spec.serve_backend_on(device) for device in DEVICES})}"]
    return "\n".join(lines) + "\n"


def configuration_markdown() -> str:
    """`docs/configuration.md`: every `.env` key, generated from KEYS (a test keeps them equal)."""
    lines = ["# Configuration: every `.env` key", "",
             "Generated from `scripts/stack_settings.py` (`KEYS`) by `python -m scripts.stack_settings docs`; a test",
             "keeps this page, `.env.example` and the chart's `settings.yaml` equal to the code. Copy `.env.example`",
             "to `.env` and change what you need: `python -m scripts.stack` validates every key at once before",
             "anything starts, and names each bad key. Keys marked *chart* are also settings of the Helm chart",
             "(`settings:` in your values). Why some defaults are what they are: [architecture.md](architecture.md).", "",
             "| key | default | chart | meaning |", "| --- | --- | --- | --- |"]
    for key in KEYS:
        choices = key.kind.split(":", 1)[1].replace("|", ", ") if key.kind.startswith("choice:") else ""
        meaning = key.help.replace("|", "\\|") + (f" (one of: {choices})" if choices else "")
        default = f"`{key.default}`" if key.default else "(empty)"
        lines.append(f"| `{key.name}` | {default} | {'chart' if key.chart else ''} | {meaning} |")
    return "\n".join(lines) + "\n"


def chart_values(settings: StackSettings) -> dict[str, dict[str, str]]:
    """A values overlay carrying the chart's keys from `.env` (what `stack up --mode kubernetes` passes)."""
    return {"settings": {key.name: settings[key.name] for key in KEYS if key.chart}}


if __name__ == "__main__":
    # `python -m scripts.stack_settings > .env.example` regenerates the documented example;
    # `python -m scripts.stack_settings chart > deploy/helm/doc-triton/settings.yaml` the chart's settings;
    # `python -m scripts.stack_settings docs > docs/configuration.md` the reference of every key.
    import sys

    texts = {"chart": chart_settings_text, "docs": configuration_markdown}
    print(texts.get(sys.argv[1] if sys.argv[1:] else "", env_example_text)(), end="")
