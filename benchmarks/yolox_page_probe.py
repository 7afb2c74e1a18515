"""What a YOLOX checkpoint finds on a PDF's pages, in fp32 and fp16 on this machine's device, without
Triton: the elements per label after the served model's thresholds (page_processing.postprocess),
the top objectness, and the largest activation (fp16 overflows past 65,504). It tells a checkpoint
that finds nothing from a served model that loses what it finds.

    python3 -m benchmarks.yolox_page_probe CHECKPOINT PDF [--pages 8] [--obj-shift 0]

`--obj-shift` adds to the objectness logits (the head's obj_preds biases): how far the pages are
from the threshold.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from scripts.ingest.sources import Document
from triton_models.yolox.build import load_model
from triton_models.yolox.page_processing import LABELS, letterbox, postprocess


def largest_activation(model: torch.nn.Module, pages: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The model's output and the largest |value| any convolution gave (inf where fp16 overflowed)."""
    top = [0.0]

    def watch(_module, _inputs, out):
        top[0] = max(top[0], out.detach().abs().float().max().item())
    hooks = [m.register_forward_hook(watch) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            return model(pages), top[0]
    finally:
        for hook in hooks:
            hook.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("pdf", type=Path)
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--obj-shift", type=float, default=0.0)
    args = parser.parse_args()
    doc = Document(args.pdf)
    rendered = [doc.page(i) for i in range(min(args.pages, len(doc)))]
    doc.close()
    boxed = [letterbox(page.pixels) for page in rendered]
    batch = torch.from_numpy(np.stack([image for image, _ in boxed]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [(torch.float32, "fp32")] + ([(torch.float16, "fp16")] if device.type == "cuda" else [])
    print(f"{args.checkpoint} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
          f"{len(rendered)} pages of {args.pdf.name}, objectness shifted by {args.obj_shift}")
    for dtype, name in runs:
        model = load_model(args.checkpoint)
        with torch.no_grad():
            for conv in model.yolox.head.obj_preds:
                conv.bias += args.obj_shift
        model = model.to(device, dtype)
        decoded, top = largest_activation(model, batch.to(device))
        decoded = decoded.float().cpu().numpy()
        found, per_page = {label: 0 for label in LABELS}, []
        for (_, ratio), page, rows in zip(boxed, rendered, decoded):
            labels = postprocess(rows, ratio, page.pixels.shape[:2])[1]
            per_page.append(len(labels))
            for label in labels:
                found[label] += 1
        finite = np.isfinite(decoded).all()
        print(f"{name}: largest activation {top:.3g}, outputs finite: {finite}, top objectness per page "
              f"{[round(float(rows[:, 4].max()), 3) for rows in decoded]}, found {found}, per page {per_page}")


if __name__ == "__main__":
    main()
