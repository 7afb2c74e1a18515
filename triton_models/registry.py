"""One declarative spec per model, one registry. A test checks that every registered model has
its builder, its `triton_models/` folder, its tests and its compose service."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class ModelSpec:
    key: str  # folder under triton_models/ and the name users pass to `build`
    title: str
    triton_names: tuple[str, ...]  # what gets published, the core model first
    checkpoint_key: str  # the .env key of the user's checkpoint
    batch_size_key: str  # the .env key of the max batch size
    default_batch_size: int
    compose_service: str
    precision: str = "fp16"

    @property
    def builder(self) -> ModuleType:
        """`triton_models/<key>/build.py`: build(options) and make_demo_checkpoint(folder)."""
        return importlib.import_module(f"triton_models.{self.key}.build")


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("caption_classification", "DeBERTa caption classification", ("deberta_large", "caption_selection"),
              "CAPTION_CHECKPOINT", "CAPTION_BATCH_SIZE", 8, "build-caption"),
    ModelSpec("yolox", "YOLOX page elements", ("yolox", "yolox_page_elements"),
              "YOLOX_CHECKPOINT", "YOLOX_BATCH_SIZE", 8, "build-yolox"),
    ModelSpec("eclair", "ECLAIR document OCR", ("eclair",),
              "ECLAIR_CHECKPOINT", "ECLAIR_BATCH_SIZE", 16, "build-eclair"),
    ModelSpec("e5_small_v2", "E5-small-v2 embeddings", ("e5_small_v2", "e5_small_v2_text"),
              "E5_CHECKPOINT", "E5_BATCH_SIZE", 64, "build-e5"),
)


def get(key: str) -> ModelSpec:
    for spec in MODELS:
        if spec.key == key:
            return spec
    raise KeyError(key)
