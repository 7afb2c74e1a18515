"""ECLAIR page helpers for clients: pad a page the way the model expects, and parse its output."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

PAGE_HEIGHT, PAGE_WIDTH = 1280, 1024
_BLOCK = re.compile(r"<x_(\d+(?:\.\d+)?)><y_(\d+(?:\.\d+)?)>(.*?)<x_(\d+(?:\.\d+)?)><y_(\d+(?:\.\d+)?)><class_([^>]+)>", re.DOTALL)


def pad_page(page: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale a uint8 HxWx3 page to fit 1280x1024 (aspect kept) and place it top-left on white.

    Returns the canvas and the scale, which `parse_blocks` uses to map boxes back."""
    from PIL import Image

    if page.ndim != 3 or page.shape[2] != 3 or page.dtype != np.uint8:
        raise ValueError(f"a page must be uint8 HxWx3, got {page.dtype} {tuple(page.shape)}")
    height, width = page.shape[:2]
    scale = min(PAGE_HEIGHT / height, PAGE_WIDTH / width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.full((PAGE_HEIGHT, PAGE_WIDTH, 3), 255, dtype=np.uint8)
    if (new_w, new_h) != (width, height):  # a page that fits already (the ingest's) is copied as it is
        page = np.asarray(Image.fromarray(page).resize((new_w, new_h), Image.BICUBIC))
    canvas[:new_h, :new_w] = page
    return canvas, scale


@dataclass(frozen=True)
class Block:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the original page's pixels
    cls: str
    text: str


def parse_blocks(output: str, scale: float = 1.0, page_hw: tuple[int, int] | None = None) -> list[Block]:
    """`<x_N><y_N>text<x_N><y_N><class_C>` runs -> blocks; coordinates are canvas pixels, divided
    by `scale` to land on the unpadded page and clipped to it when `page_hw` is given."""
    blocks = []
    for match in _BLOCK.finditer(output):
        x1, y1, text, x2, y2, cls = match.groups()
        box = [float(x1) / scale, float(y1) / scale, float(x2) / scale, float(y2) / scale]
        if page_hw is not None:
            height, width = page_hw
            box = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                   min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]
        blocks.append(Block(tuple(box), cls, text.strip()))
    return blocks
