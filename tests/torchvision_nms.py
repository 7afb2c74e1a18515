"""torchvision's `nms` operator for the CPU build of torch the tests run on.

torchvision is installed apart, in `.venv/client-torchvision` (`make setup`), not in the
environment: there its failing import would break transformers in every process of the stack
(builders, Triton's python models). Only the process that runs nv-ingest's client puts it on its
path, through `install()`.

PyPI's torchvision wheel is built against PyPI's CUDA torch; beside the CPU build of torch its
compiled operators do not load and `import torchvision` fails ("operator torchvision::nms does not
exist"). nv-ingest's YOLOX client calls `torchvision.ops.batched_nms`, so the tests that run that
client unmodified define the operator first, under torchvision's own name, with `torch.library`,
and give it a CPU kernel (greedy NMS, suppressing IoU > threshold, as torchvision's own kernel).
torchvision then imports; its extension flag (`torchvision.extension._has_ops`, False when its
compiled library did not load) is set once the import is done, so that `nms`/`batched_nms` call
the operator, which dispatches to this kernel. No line of the client changes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

FOLDER = Path(__file__).resolve().parent.parent / ".venv" / "client-torchvision"
_LIBRARY = None


def _nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = (torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest])).clamp(min=0)
        height = (torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest])).clamp(min=0)
        inter = width * height
        iou = inter / (areas[best] + areas[rest] - inter).clamp(min=1e-9)
        order = rest[iou <= iou_threshold]
    return torch.tensor(keep, dtype=torch.int64)


def install() -> None:
    """Define torchvision::nms (and the qnms schema its import registers a fake kernel for) once per
    process, where torchvision's own operators are missing."""
    global _LIBRARY
    if _LIBRARY is not None or hasattr(torch.ops.torchvision, "nms"):
        return
    if not (FOLDER / "torchvision").is_dir():
        raise RuntimeError(f"torchvision is not in {FOLDER}; run `make setup`")
    sys.path.insert(0, str(FOLDER))
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", _nms, "CPU")
    import torchvision.extension  # imports with its flag False: its other operators stay unregistered

    torchvision.extension._has_ops = lambda: True  # noqa: SLF001 (nms, the one operator the client calls, is here)
