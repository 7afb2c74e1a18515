"""Build YOLOX page elements: best_ckpt.pth -> ONNX -> TensorRT fp16, plus the image-in model.

Checkpoint: upstream YOLOX's training checkpoint (`{"model": state_dict, ...}`) or a bare
state_dict. YOLOX-L (depth 1.0, width 1.0) unless an `exp.json` beside it says
`{"depth": D, "width": W}` (the demo checkpoint is a small one). 3 classes, 1024x1024 input;
one dynamic batch profile 1..max.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from converters.errors import UserError
from converters.model_folder import Golden
from converters.export import run_as_served
from converters.io_config import parse_io_config
from converters.loading import load_state_dict
from converters.manifest import file_sha256
from converters.pipeline import convert
from converters.precision import TOLERANCES
from third_party.yolox import build_yolox
from triton_models.common import (BuildOptions, companion_is_current, conversion_settings, core_fingerprint,
                                  publish_python_model, python_model_config, tensor)
from triton_models.registry import get
from triton_models.yolox.page_processing import LABELS, letterbox, postprocess

HERE = Path(__file__).parent
CORE, PAGES = get("yolox").triton_names
IO_CONFIG = get("yolox").core_io_json


def model_size(checkpoint: Path) -> tuple[float, float]:
    exp = Path(checkpoint).with_name("exp.json")
    if exp.is_file():
        data = json.loads(exp.read_text())
        return float(data.get("depth", 1.0)), float(data.get("width", 1.0))
    return 1.0, 1.0


class YOLOXOnPages(torch.nn.Module):
    """The served core: YOLOX taking letterboxed pages as uint8 and casting them on its own device
    to the dtype of its weights (YOLOX takes raw 0..255 values: the cast is all its normalisation).
    Checkpoints load into `.yolox` exactly as into upstream's YOLOX."""

    def __init__(self, yolox: torch.nn.Module) -> None:
        super().__init__()
        self.yolox = yolox

    def forward(self, pages: torch.Tensor) -> torch.Tensor:
        weight = next(self.yolox.parameters())
        return self.yolox(pages.to(weight.dtype))


def load_model(checkpoint: Path) -> torch.nn.Module:
    """The served core (`YOLOXOnPages`) with the checkpoint's weights."""
    depth, width = model_size(checkpoint)
    model = build_yolox(depth, width, num_classes=len(LABELS))
    result = model.load_state_dict(load_state_dict(checkpoint), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"YOLOX checkpoint {checkpoint} does not match YOLOX (depth {depth}, width {width}, "
                        f"{len(LABELS)} classes): missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}; "
                        "add an exp.json with its depth and width beside it.")
    return YOLOXOnPages(model).eval()


def make_demo_checkpoint(folder: Path) -> Path:
    """A small random YOLOX (depth 0.33, width 0.25: YOLOX-nano's size, standard convolutions)."""
    root = Path(folder) / "yolox_demo"
    checkpoint = root / "best_ckpt.pth"
    if not checkpoint.is_file():
        root.mkdir(parents=True, exist_ok=True)
        (root / "exp.json").write_text(json.dumps({"depth": 0.33, "width": 0.25}))
        torch.manual_seed(0)
        torch.save({"model": build_yolox(0.33, 0.25, len(LABELS)).state_dict(), "start_epoch": 0}, checkpoint)
    return checkpoint


def demo_page() -> np.ndarray:
    """A synthetic 1100x850 page: white, with a dark table-like block and a title bar."""
    page = np.full((1100, 850, 3), 255, dtype=np.uint8)
    page[100:140, 100:750] = 30
    page[300:700, 120:730] = 200
    page[300:700:40, 120:730] = 20
    return page


def build(options: BuildOptions) -> list[Path]:
    checkpoint = Path(options.checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"YOLOX_CHECKPOINT {checkpoint} must be a checkpoint file (best_ckpt.pth).")
    score_threshold = float(options.extra.get("score_threshold", "0.1"))
    iou_threshold = float(options.extra.get("nms_iou_threshold", "0.5"))
    settings = conversion_settings(options, name=CORE, io_json=IO_CONFIG, script=Path(__file__),
                                   class_name="YOLOXOnPages", sequence_length=1)
    core = convert(settings, load_model=lambda: load_model(checkpoint))
    precision = core.precision

    config = python_model_config(
        PAGES, [tensor("image", "TYPE_STRING", [1], optional=True), tensor("pixels", "TYPE_UINT8", [-1, -1, 3], optional=True)],
        [tensor("boxes", "TYPE_FP32", [-1, 4]), tensor("labels", "TYPE_STRING", [-1]), tensor("scores", "TYPE_FP32", [-1])],
        options.max_batch_size, {"core_model": CORE, "core_max_batch": str(options.max_batch_size),
                                 "score_threshold": str(score_threshold), "nms_iou_threshold": str(iou_threshold)},
        instance_count=options.instance_count)
    sources = {"checkpoint": file_sha256(checkpoint), "model_py": file_sha256(HERE / "yolox_page_elements_model.py"),
               "processing": file_sha256(HERE / "page_processing.py"), "core": core_fingerprint(core)}
    if companion_is_current(options.repo, config, sources, options.force):
        return [core.model_dir, options.repo / PAGES]

    from PIL import Image

    page = demo_page()
    encoded = io.BytesIO()
    Image.fromarray(page).save(encoded, format="PNG")
    tensor_, ratio = letterbox(page)
    raw = run_as_served(load_model(checkpoint), parse_io_config(IO_CONFIG), {"input": tensor_[None]}, options.device,
                        precision)["output"][0]
    boxes, labels, scores = postprocess(raw, ratio, page.shape[:2], score_threshold, iou_threshold)
    golden = Golden({"image": np.array([[encoded.getvalue()]], dtype=np.bytes_)},
                    {"boxes": boxes[None], "labels": np.array([labels.astype(str)]), "scores": scores[None]},
                    TOLERANCES[precision])
    return [core.model_dir, publish_python_model(
        options.repo, config, HERE / "yolox_page_elements_model.py", sources=sources, golden=golden,
        files={"1/page_processing.py": HERE / "page_processing.py"}, demo=options.demo)]
