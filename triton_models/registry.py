"""One declarative spec per model, one registry. What the rest of the project knows of a model
comes from here: its Triton names (the core first, then its python-backend companions), its
`.env` keys and their defaults (`scripts/stack_settings.py` derives them, `.env.example` is
generated from them), its compose service (a test checks docker-compose.yaml against it) and the
token length of its text inputs, the core model's inputs and outputs (its IO config, as
`--model-io-config` takes it). Tolerances are not per model: they follow the served precision
(`converters/precision.py`). A test checks that every registered model has its builder,
its `triton_models/` folder, its tests and its compose service."""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class ModelSpec:
    key: str  # folder under triton_models/ and the name users pass to `build`
    triton_names: tuple[str, ...]  # what gets published, the core model first
    env_prefix: str  # <PREFIX>_CHECKPOINT, <PREFIX>_BATCH_SIZE and <PREFIX>_GPU_IDS in .env
    default_batch_size: int
    compose_service: str
    checkpoint_help: str  # what <PREFIX>_CHECKPOINT names, for .env.example
    batch_help: str = ""  # anything to add to the batch size's line in .env.example
    gpu_ids_help: str = ""  # anything to add to the GPU ids' line in .env.example
    max_length: int | None = None  # tokens per text of the core's inputs (text models)
    core_io: dict | None = None  # the core's IO config (`--model-io-config`); None: no converted core
    pad_sequence: bool = False  # zeros on the core's -1 axes change no answer (`--pad-sequence`)
    channel_order: str | None = None  # image models: what the checkpoint was trained on (RGB | BGR)
    # how its builder serves it on a GPU host (compose's GPU profile, the chart on GPU nodes); CPU: python_onnx
    gpu_serve_backend: str = "tensorrt_plan"
    options: tuple[tuple[str, str], ...] = ()  # (builder `--option` name, the `.env` key that sets it)

    def serve_backend_on(self, device: str) -> str:
        """The serve backend its builder uses on `device` where the user did not choose one."""
        return self.gpu_serve_backend if device == "cuda" else "python_onnx"

    @property
    def core_io_json(self) -> str:
        return json.dumps(self.core_io)

    @property
    def core(self) -> str:
        return self.triton_names[0]

    @property
    def companions(self) -> tuple[str, ...]:
        return self.triton_names[1:]

    @property
    def checkpoint_key(self) -> str:
        return f"{self.env_prefix}_CHECKPOINT"

    @property
    def batch_size_key(self) -> str:
        return f"{self.env_prefix}_BATCH_SIZE"

    @property
    def gpu_ids_key(self) -> str:
        return f"{self.env_prefix}_GPU_IDS"

    @property
    def builder(self) -> ModuleType:
        """`triton_models/<key>/build.py`: OPTIONS, read_options(options), build(options) and
        make_demo_checkpoint(folder)."""
        return importlib.import_module(f"triton_models.{self.key}.build")


MODELS: tuple[ModelSpec, ...] = (
    # 64, not the seed's 8: nv-ingest's caption client sends images x candidates rows in one request
    # (up to 8 x 5 = 40) and turns a refused request into empty captions without a word.
    ModelSpec("caption_classification", ("deberta_large", "caption_selection"), "CAPTION", 64, "build-caption",
              "caption model folder under CHECKPOINTS_DIR (empty: demo)",
              batch_help=" (64: nv-ingest's caption client sends up to 40 rows per request)", max_length=128, core_io={
                  "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [128], "range": [1000, 2000]},
                             {"name": "input_mask", "dtype": "float32", "shape": [128], "range": [1, 2]},
                             {"name": "input_token_type_ids", "dtype": "float32", "shape": [128], "optional": True}],
                  "outputs": [{"name": "output", "dtype": "float32", "shape": [1]}]}),
    # nv-ingest's contract (its YOLOX client): RGB 1024x1024 pages as fp32 0..255 -> 21504 anchors
    # (strides 8, 16, 32) x (cx, cy, w, h decoded, objectness, 3 classes); `yolox_uint8` is the
    # same core taking uint8 pages, for `yolox_page_elements`. The seed's page-elements checkpoint
    # is trained on RGB pages (an upstream YOLOX one says BGR in its exp.json).
    ModelSpec("yolox", ("yolox", "yolox_uint8", "yolox_page_elements"), "YOLOX", 8, "build-yolox",
              "best_ckpt.pth under CHECKPOINTS_DIR (empty: demo)",
              batch_help=" (a power of two: nv-ingest's client sends batches of powers of two)", channel_order="RGB",
              core_io={
                  "inputs": [{"name": "input", "dtype": "float32", "shape": [3, 1024, 1024], "range": [0, 256]}],
                  "outputs": [{"name": "output", "dtype": "float32", "shape": [21504, 8]}]}),
    # ECLAIR keeps its PyTorch runtime on GPUs too (the TensorRT-LLM overlay replaces its builder)
    ModelSpec("eclair", ("eclair",), "ECLAIR", 16, "build-eclair",
              "ECLAIR VisionEncoderDecoder folder under CHECKPOINTS_DIR (empty: demo)",
              batch_help=" (pages decoded at once: the graph decoder's slots)", gpu_serve_backend="python_onnx",
              gpu_ids_help=" (e.g. 1 with TRITON_GPU_IDS=0,1: OCR, the slowest stage of ingest, on a GPU of its own)",
              options=(("compile_encoder", "ECLAIR_COMPILE_ENCODER"),)),
    ModelSpec("e5_small_v2", ("e5_small_v2", "e5_small_v2_text"), "E5", 64, "build-e5",
              "e5-small-v2 Hugging Face folder under CHECKPOINTS_DIR (empty: demo)", max_length=512, core_io={
                  "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [-1], "max_shape": [512], "range": [1000, 2000]},
                             {"name": "attention_mask", "dtype": "int64", "shape": [-1], "max_shape": [512], "range": [1, 2]}],
                  "outputs": [{"name": "embedding", "dtype": "float32", "shape": [384]}]}, pad_sequence=True),
)


def by_key_or_service(name: str | None) -> ModelSpec | None:
    """The model a user names by its key (`e5_small_v2`) or its builder's compose service (`build-e5`)."""
    return next((spec for spec in MODELS if name in (spec.key, spec.compose_service)), None)


def get(key: str) -> ModelSpec:
    for spec in MODELS:
        if spec.key == key:
            return spec
    raise KeyError(key)
