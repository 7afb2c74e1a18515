"""Build YOLOX page elements: best_ckpt.pth -> ONNX -> TensorRT fp16 (two cores), plus the image-in model.

Checkpoint: upstream YOLOX's training checkpoint (`{"model": state_dict, ...}`) or a bare
state_dict. YOLOX-L (depth 1.0, width 1.0) unless an `exp.json` beside it says
`{"depth": D, "width": W}` (the demo checkpoint is a small one), and trained on RGB pages (the
seed's page-elements checkpoint, as nv-ingest feeds it) unless `exp.json` says
`"channel_order": "BGR"` (an upstream YOLOX one, trained on OpenCV images). 3 classes, 1024x1024
input; one dynamic batch profile 1..max.

Published, from the same weights:
  - `yolox`: nv-ingest's contract: `input` FP32 [B,3,1024,1024] RGB 0..255 -> `output` FP32
    [B,21504,8] decoded (cx, cy, w, h in input pixels, objectness, 3 class scores);
  - `yolox_uint8`: the same with `input` UINT8 (a quarter of the bytes), for `yolox_page_elements`;
  - `yolox_page_elements`: a PNG/JPEG or pixels -> boxes, labels, scores.
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
                                  gpu_placement, publish_python_model, python_model_config, tensor)
from triton_models.registry import get
from triton_models.yolox.page_processing import LABELS, letterbox, postprocess

# `--option` keys this builder reads (triton_models/build.py refuses any other)
OPTIONS = {"score_threshold": "yolox_page_elements: the lowest score kept (default 0.1)",
           "nms_iou_threshold": "yolox_page_elements: class-aware NMS overlap (default 0.5)"}

HERE = Path(__file__).parent
CORE, UINT8_CORE, PAGES = get("yolox").triton_names
IO_CONFIG = get("yolox").core_io_json
CHANNEL_ORDERS = ("RGB", "BGR")
# yolox_page_elements' own work is host work, about 12 ms of CPU a page (reading the page, letterbox,
# the call to the core, NMS), done one batch at a time by each instance while it also waits for the
# core: with one instance per core instance, page elements stopped at 88-100 pages/s served on an
# H200 (ingest run 13) against 321-423 for the core alone. At least this many spread that work
# over the host's cores, and their calls meet in the core's dynamic batcher: 1.5x with 4 against 2,
# 2.2x with 8 (docs/results/h200/page_elements_instances/). Not more: each keeps
# the shared memory of its largest batch, about 8 MB a page (51-69 MB at a batch of 8 on CPU),
# which comes out of TRITON_SHM_SIZE.
MIN_PAGE_INSTANCES = 4


def uint8_io_config() -> str:
    """`yolox_uint8`'s IO: `yolox`'s, with uint8 pages."""
    io = json.loads(IO_CONFIG)
    io["inputs"][0]["dtype"] = "uint8"
    return json.dumps(io)


def _exp(checkpoint: Path) -> dict:
    exp = Path(checkpoint).with_name("exp.json")
    return json.loads(exp.read_text()) if exp.is_file() else {}


def model_size(checkpoint: Path) -> tuple[float, float]:
    data = _exp(checkpoint)
    return float(data.get("depth", 1.0)), float(data.get("width", 1.0))


def channel_order(checkpoint: Path) -> str:
    """The channel order the checkpoint was trained on: exp.json's `channel_order`, else the
    registry's (RGB: the seed's page-elements checkpoint)."""
    order = str(_exp(checkpoint).get("channel_order", get("yolox").channel_order)).upper()
    if order not in CHANNEL_ORDERS:
        raise UserError(f"{Path(checkpoint).with_name('exp.json')} has channel_order '{order}'; use RGB or BGR.")
    return order


class YOLOXOnPages(torch.nn.Module):
    """A served core: YOLOX taking letterboxed RGB pages (uint8 or fp32, raw 0..255 values: the cast
    is all its normalisation), cast on its own device to the dtype of its weights, turned to BGR
    where the checkpoint was trained on BGR, and decoded in the graph (as upstream's export with
    `decode_in_inference`). Checkpoints load into `.yolox` exactly as into upstream's YOLOX."""

    def __init__(self, yolox: torch.nn.Module, channels: str = "RGB") -> None:
        super().__init__()
        self.yolox = yolox
        self.yolox.head.decode_in_inference = True
        self.to_bgr = channels == "BGR"

    def forward(self, pages: torch.Tensor) -> torch.Tensor:
        weight = next(self.yolox.parameters())
        pages = pages.to(weight.dtype)
        return self.yolox(pages.flip(1) if self.to_bgr else pages)


def load_model(checkpoint: Path) -> torch.nn.Module:
    """The served core (`YOLOXOnPages`) with the checkpoint's weights."""
    depth, width = model_size(checkpoint)
    model = build_yolox(depth, width, num_classes=len(LABELS))
    result = model.load_state_dict(load_state_dict(checkpoint), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"YOLOX checkpoint {checkpoint} does not match YOLOX (depth {depth}, width {width}, "
                        f"{len(LABELS)} classes): missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}; "
                        "add an exp.json with its depth and width beside it.")
    return YOLOXOnPages(model, channel_order(checkpoint)).eval()


def make_demo_checkpoint(folder: Path) -> Path:
    """A small random YOLOX (depth 0.33, width 0.25: YOLOX-nano's size, standard convolutions) that
    finds a few boxes on a page (`demo_yolox`)."""
    root = Path(folder) / "yolox_demo"
    checkpoint = root / "best_ckpt.pth"
    if not checkpoint.is_file():
        root.mkdir(parents=True, exist_ok=True)
        (root / "exp.json").write_text(json.dumps({"depth": 0.33, "width": 0.25, "channel_order": "RGB"}))
        torch.save({"model": demo_yolox().state_dict(), "start_epoch": 0}, checkpoint)
    return checkpoint


def demo_yolox(obj_logit: float = -8.0, depth: float = 0.33, width: float = 0.25,
               calibration_pages: torch.Tensor | None = None) -> torch.nn.Module:
    """Random weights, yet a demo with a few boxes: PyTorch's default init shrinks the activations
    through YOLOX's depth until every anchor scores the same (all 21,504 or none pass a threshold),
    so the convolutions take He init, and each head's last layer is scaled so that on the demo page
    its logits have spread 2 (objectness centred at `obj_logit`: about 20 boxes score 0.1). Any
    YOLOX size (`depth`, `width`; the GPU benchmark's YOLOX-L is 1.0, 1.0).

    He init keeps the demo's activations under 1.1e4 on the raw 0..255 page, within fp16; YOLOX-L's
    depth takes them to 2.4e7, which is inf in fp16. Scaling each layer to unit std is not enough
    for fp16 either: the features keep a common part much larger than what varies across the page,
    fp16 rounds the variation away, and an fp16 YOLOX-L found nothing where fp32 found boxes
    (measured on an H200, benchmarks/yolox_page_probe.py). `calibration_pages` (letterboxed pages
    [N, 3, 1024, 1024], 0..255, like the pages it will see) sets every BatchNorm's statistics on
    them: each channel centred (the common part gone), each layer scaled to unit variance as a
    whole (per channel, near-constant channels were amplified until ONNX Runtime and PyTorch parted
    ways on the builder's check); the head is then scaled on those pages instead of the demo page.
    """
    torch.manual_seed(0)
    model = build_yolox(depth, width, len(LABELS)).eval()
    pages = calibration_pages if calibration_pages is not None else torch.from_numpy(letterbox(demo_page())[0][None])
    pages = pages.float()
    with torch.no_grad():
        for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.normal_(0.0, (2.0 / conv.weight[0].numel()) ** 0.5)
        if calibration_pages is not None:
            _calibrate_norms(model, pages)
        logits, hooks = {}, []
        for kind in ("obj", "cls", "reg"):
            for level, conv in enumerate(getattr(model.head, f"{kind}_preds")):
                hooks.append(conv.register_forward_hook(
                    lambda _m, _i, out, key=(kind, level): logits.__setitem__(key, out.transpose(0, 1).flatten(1))))
        model(pages)
        for hook in hooks:
            hook.remove()
        for (kind, level), values in logits.items():
            conv = getattr(model.head, f"{kind}_preds")[level]
            scale = (0.3 if kind == "reg" else 2.0) / values.std(1).clamp_min(1e-6)
            conv.weight.mul_(scale[:, None, None, None])
            conv.bias.copy_(scale * (conv.bias - values.mean(1)) + (obj_logit if kind == "obj" else 0.0))
    return model


def _calibrate_norms(model: torch.nn.Module, pages: torch.Tensor) -> None:
    """Each BatchNorm's running mean := its input's per-channel mean on `pages`, and its running
    variance := the variance of the whole centred input (one number for the layer), in one forward
    pass (each layer sees the ones before it already calibrated)."""
    def calibrate(norm, inputs):
        x = inputs[0]
        mean = x.mean((0, 2, 3))
        norm.running_mean.copy_(mean)
        norm.running_var.fill_((x - mean[None, :, None, None]).square().mean())
    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        model(pages)
    finally:
        for hook in hooks:
            hook.remove()


def demo_page() -> np.ndarray:
    """A synthetic 1100x850 page: white, with a dark table-like block and a title bar."""
    page = np.full((1100, 850, 3), 255, dtype=np.uint8)
    page[100:140, 100:750] = 30
    page[300:700, 120:730] = 200
    page[300:700:40, 120:730] = 20
    return page


def read_options(options: BuildOptions) -> tuple[float, float]:
    """The score and NMS overlap thresholds (triton_models.build checks them before any work)."""
    return options.number("score_threshold", 0.1, 0.0, 1.0), options.number("nms_iou_threshold", 0.5, 0.0, 1.0)


def build(options: BuildOptions) -> list[Path]:
    checkpoint = Path(options.checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"YOLOX_CHECKPOINT {checkpoint} must be a checkpoint file (best_ckpt.pth).")
    score_threshold, iou_threshold = read_options(options)
    cores = [convert(conversion_settings(options, name=name, io_json=io_json, script=Path(__file__),
                                         class_name="YOLOXOnPages", sequence_length=1),
                     load_model=lambda: load_model(checkpoint))
             for name, io_json in ((CORE, IO_CONFIG), (UINT8_CORE, uint8_io_config()))]
    core = cores[1]  # what yolox_page_elements calls
    precision = core.precision

    config = python_model_config(
        PAGES, [tensor("image", "TYPE_STRING", [1], optional=True), tensor("pixels", "TYPE_UINT8", [-1, -1, 3], optional=True)],
        [tensor("boxes", "TYPE_FP32", [-1, 4]), tensor("labels", "TYPE_STRING", [-1]), tensor("scores", "TYPE_FP32", [-1])],
        options.max_batch_size, {"core_model": UINT8_CORE, "core_max_batch": str(options.max_batch_size),
                                 "score_threshold": str(score_threshold), "nms_iou_threshold": str(iou_threshold)},
        instance_count=max(gpu_placement(options)[0], MIN_PAGE_INSTANCES))
    sources = {"checkpoint": file_sha256(checkpoint), "model_py": file_sha256(HERE / "yolox_page_elements_model.py"),
               "processing": file_sha256(HERE / "page_processing.py"), "core": core_fingerprint(core)}
    if companion_is_current(options.repo, config, sources, options.force):
        return [*(c.model_dir for c in cores), options.repo / PAGES]

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
    return [*(c.model_dir for c in cores), publish_python_model(
        options.repo, config, HERE / "yolox_page_elements_model.py", sources=sources, golden=golden,
        files={"1/page_processing.py": HERE / "page_processing.py"}, demo=options.demo)]
