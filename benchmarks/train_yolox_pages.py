"""A YOLOX trained briefly on the benchmark's own generated pages, whose element boxes are known
(benchmarks/ingest_pdf.py: tables, figures labelled chart, a scan's title bar and boxed block), so
that the GPU ingest benchmark's real-size YOLOX-L finds what a trained one would on those pages.
A random-weight YOLOX-L does not: it scores pages with much ink (scans) far above the rest and
finds no table on a text-layer page, so captions never get a call (docs/benchmarks.md, Ingest).

    python3 -m benchmarks.train_yolox_pages OUT_FOLDER [--depth 1.0 --width 1.0] [--steps 400]

Writes OUT_FOLDER/best_ckpt.pth and exp.json, as the builder takes a YOLOX checkpoint. The loss is
a plain one, not upstream's SimOTA: an anchor is positive for the smallest box whose centre region
(2.5 strides) and body hold the anchor's centre; objectness and classes by binary cross-entropy,
the box (YOLOX's offsets and log sizes) by L1 on the positives.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from third_party.yolox import build_yolox
from triton_models.yolox.page_processing import LABELS, letterbox

STRIDES = (8, 16, 32)
CENTRE_RADIUS = 2.5  # strides around a box's centre where an anchor may be positive (as YOLOX's)
INIT = "trained_on_generated_pages"  # exp.json's mark: gpu_ingest.sh retrains a YOLOX-L without it


def training_pages(count: int, size: int, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`count` mixed pages (not the benchmark's own: another seed) letterboxed to `size`: uint8
    [N, 3, size, size], and per page its boxes [K, 5] (label index, cx, cy, w, h in input pixels)."""
    from benchmarks.ingest_pdf import mixed_pages, write_pdf
    from scripts.ingest.sources import Document

    elements: list = []
    with tempfile.TemporaryDirectory() as folder:
        doc = Document(write_pdf(Path(folder) / "pages.pdf", mixed_pages(count, seed=seed), seed=seed,
                                 elements=elements))
        rendered = [doc.page(i).pixels for i in range(len(doc))]
        doc.close()
    images, targets = [], []
    for pixels, found in zip(rendered, elements):
        image, ratio = letterbox(pixels, size)
        height, width = pixels.shape[:2]
        rows = [(LABELS.index(label), (x0 + x1) / 2 * width * ratio, (y0 + y1) / 2 * height * ratio,
                 (x1 - x0) * width * ratio, (y1 - y0) * height * ratio) for label, (x0, y0, x1, y1) in found]
        images.append(image)
        targets.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, 5))
    return torch.from_numpy(np.stack(images)), targets


def assign(boxes: torch.Tensor, size: int, classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor, all levels in the head's order: objectness [A], class one-hot [A, C] and box
    targets [A, 4] (offset from the grid cell in strides, log size in strides; 0 where negative)."""
    objectness, onehot, regression = [], [], []
    for stride in STRIDES:
        cells = size // stride
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        centre_x, centre_y = (xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride
        best = torch.full((cells * cells,), -1, dtype=torch.long)
        best_area = torch.full((cells * cells,), math.inf)
        for index, (_, cx, cy, w, h) in enumerate(boxes.tolist()):
            inside = ((centre_x - cx).abs() < w / 2) & ((centre_y - cy).abs() < h / 2)
            central = ((centre_x - cx).abs() < CENTRE_RADIUS * stride) & ((centre_y - cy).abs() < CENTRE_RADIUS * stride)
            take = inside & central & (w * h < best_area)
            best[take], best_area[take] = index, w * h
        positive = best >= 0
        chosen = boxes[best.clamp(min=0)] if len(boxes) else torch.ones(len(best), 5)
        box = torch.stack([chosen[:, 1] / stride - xs.flatten(), chosen[:, 2] / stride - ys.flatten(),
                           (chosen[:, 3] / stride).log(), (chosen[:, 4] / stride).log()], 1)
        objectness.append(positive.float())
        onehot.append(F.one_hot(chosen[:, 0].long(), classes).float() * positive[:, None])
        regression.append(torch.where(positive[:, None], box, 0.0))
    return torch.cat(objectness), torch.cat(onehot), torch.cat(regression)


def head_logits(yolox: torch.nn.Module, pages: torch.Tensor) -> torch.Tensor:
    """The head's outputs before its sigmoids, [B, anchors, 4 + 1 + classes], in its anchor order."""
    head, outputs = yolox.head, []
    for level, x in enumerate(yolox.backbone(pages)):
        x = head.stems[level](x)
        features = head.reg_convs[level](x)
        out = torch.cat([head.reg_preds[level](features), head.obj_preds[level](features),
                         head.cls_preds[level](head.cls_convs[level](x))], 1)
        outputs.append(out.flatten(start_dim=2))
    return torch.cat(outputs, 2).permute(0, 2, 1)


def loss(logits: torch.Tensor, objectness: torch.Tensor, onehot: torch.Tensor, regression: torch.Tensor) -> torch.Tensor:
    positive = objectness > 0
    loss_obj = F.binary_cross_entropy_with_logits(logits[..., 4], objectness, reduction="sum") / positive.sum().clamp(min=1)
    if not positive.any():
        return loss_obj
    loss_cls = F.binary_cross_entropy_with_logits(logits[..., 5:][positive], onehot[positive])
    loss_box = F.l1_loss(logits[..., :4][positive], regression[positive])
    return loss_obj + loss_cls + 5.0 * loss_box


def train(model: torch.nn.Module, images: torch.Tensor, targets: list[torch.Tensor], steps: int, batch: int = 8,
          lr: float = 1e-3, seed: int = 0, log=print) -> list[float]:
    """AdamW on random batches of `images` (uint8, raw 0..255 as served); returns the losses."""
    device = next(model.parameters()).device
    size = images.shape[-1]
    assigned = [tuple(t.to(device) for t in assign(boxes, size, len(LABELS))) for boxes in targets]
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    use_bf16 = device.type == "cuda"
    losses = []
    model.train()
    for step in range(steps):
        chosen = torch.randint(0, len(images), (min(batch, len(images)),), generator=generator).tolist()
        pages = images[chosen].to(device).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = head_logits(model, pages)
        value = loss(logits.float(), *(torch.stack([assigned[i][part] for i in chosen]) for part in range(3)))
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        schedule.step()
        losses.append(value.item())
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"step {step}: loss {losses[-1]:.3f}")
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.train_yolox_pages", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--depth", type=float, default=1.0)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--pages", type=int, default=48)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="input size (the served model's is 1024)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images, targets = training_pages(args.pages, args.size)
    model = build_yolox(args.depth, args.width, num_classes=len(LABELS)).to(device)
    losses = train(model, images, targets, args.steps, args.batch)
    print(f"loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f} over {args.steps} steps of {args.batch} pages "
          f"[{args.size}, {args.size}] on {device}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.eval().state_dict()}, args.out / "best_ckpt.pth")
    (args.out / "exp.json").write_text(json.dumps({"depth": args.depth, "width": args.width, "init": INIT,
                                                   "channel_order": "RGB"}))


if __name__ == "__main__":
    main()
