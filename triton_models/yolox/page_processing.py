"""YOLOX page-element pre- and post-processing: numpy and Pillow only, so the same code runs in
the Triton python backend, in the builder (golden answers) and in the tests. The grid is decoded
inside the served cores (nv-ingest's client reads `yolox`'s output already decoded)."""
from __future__ import annotations

import io

import numpy as np

INPUT_SIZE = 1024
PAD_VALUE = 114
LABELS = ("table", "chart", "title")


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 HxWx3 RGB; ValueError when the bytes are no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"'image' is not a decodable PNG/JPEG ({exc})") from None


def fit(image: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, float]:
    """The page resized, keeping its aspect ratio, to fit a size x size canvas (Pillow's bilinear),
    and the ratio; a page that already fits on one side and within the other is returned as it is.
    A client may send a page fitted here (the ingest pipeline does, on its raster workers): the
    served wrapper's `letterbox` then only pads it, and the boxes, normalised, are the same."""
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise ValueError(f"a page must be uint8 HxWx3, got {image.dtype} {tuple(image.shape)}")
    height, width = image.shape[:2]
    ratio = min(size / height, size / width)
    # + 1e-6: the limiting side is exactly `size` (int(1122 * (1024 / 1122)) is 1023 in floating point)
    new_w, new_h = max(1, int(width * ratio + 1e-6)), max(1, int(height * ratio + 1e-6))
    if (new_w, new_h) == (width, height):
        return image, ratio
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)), ratio


def letterbox(image: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into a size x size canvas padded with 114 at the bottom and
    right (as nv-ingest's `resize_image` and upstream's ValTransform), channels as given (RGB: the
    served cores turn them into what the checkpoint was trained on), CHW uint8: the core casts on
    its device (a batch of 16 pages is 50 MB, not 200 MB of fp32)."""
    resized, ratio = fit(image, size)
    return padded_batch([resized], size)[0], ratio


def padded_batch(fitted: list[np.ndarray], size: int = INPUT_SIZE) -> np.ndarray:
    """Pages that fit (`fit`'s) -> the letterboxed batch, uint8 [N, 3, size, size]: each page copied
    once into its place, channels first (a third of the time of padding, transposing and stacking
    apart, in the served wrapper)."""
    batch = np.empty((len(fitted), 3, size, size), dtype=np.uint8)
    for slot, page in zip(batch, fitted):
        height, width = page.shape[:2]
        slot[:, height:, :] = PAD_VALUE
        slot[:, :height, width:] = PAD_VALUE
        slot[:, :height, :width] = page.transpose(2, 0, 1)
    return batch


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None) -> list[int]:
    """Greedy non-maximum suppression on x1, y1, x2, y2 boxes; with `classes`, a box suppresses only
    boxes of its own class (as torchvision's batched_nms, which nv-ingest and upstream YOLOX use)."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        suppressed = iou > iou_threshold
        if classes is not None:
            suppressed &= classes[rest] == classes[best]
        order = rest[~suppressed]
    return keep


def postprocess(decoded: np.ndarray, ratio: float, page_hw: tuple[int, int], score_threshold: float = 0.1,
                iou_threshold: float = 0.5, labels=LABELS):
    """The served core's output for one page (anchors x [cx, cy, w, h in input pixels, objectness,
    class scores]) -> (boxes [K,4] normalised x1,y1,x2,y2 on the page, labels [K], scores [K]):
    score = objectness x best class score, kept from `score_threshold`, class-aware NMS."""
    class_scores = decoded[:, 5:5 + len(labels)]
    classes = class_scores.argmax(axis=1)
    scores = decoded[:, 4] * class_scores[np.arange(len(classes)), classes]
    candidates = np.nonzero(scores >= score_threshold)[0]
    candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
    cx, cy, w, h = (decoded[candidates, i] for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) / ratio
    keep = nms(boxes, scores[candidates], iou_threshold, classes[candidates]) if len(candidates) else []
    page_h, page_w = page_hw
    boxes = boxes[keep] / np.array([page_w, page_h, page_w, page_h], dtype=np.float32)
    return (np.clip(boxes, 0.0, 1.0).astype(np.float32), np.array([labels[c] for c in classes[candidates][keep]], dtype=object),
            scores[candidates][keep].astype(np.float32))
