"""Where DeBERTa-large's FP8 error and speed come from, on a GPU: the random-weight caption model
(triton_models/caption_classification, fp16 beside fp32) with one group of linear layers at a time
in FP8 (converters/fp8.py: row-wise weight scales, per-token activations), each group's logits
error to fp32 over 66 rows and top-row changes per batch of 8, as the build's gate measures them;
then fp16, all-FP8 and the groups within the gate's bound, each compiled (torch.compile) and
replayed as a CUDA graph at [64, 128] tokens, in items/s and as a fraction of the fp16 dense limit.

    python3 benchmarks/fp8_probe.py [--batch 64] [--tokens 128] [--dense-tflops 989]
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.graph_timing import capture, seconds_per_replay  # noqa: E402
from converters.fp8 import ERROR_FACTOR, quantise_linear_layers, top_changes  # noqa: E402
from triton_models.caption_classification.model_script import DebertaLargeModel  # noqa: E402

GROUPS = {"attention in_proj (q/k/v)": r"attention\.self\.in_proj", "attention out": r"attention\.output\.dense",
          "FFN up": r"intermediate\.dense", "FFN down": r"layer\.\d+\.output\.dense"}


def logits(model, batches):
    with torch.inference_mode():
        return torch.cat([model(ids, mask).float() for ids, mask in batches])[:, 0]


def changed(reference, other, fp16_error, rows=8):
    """Top-row changes per batch of `rows`, by the build gate's rule."""
    batches = lambda scores: [part.cpu().numpy() for part in scores.split(rows)]  # noqa: E731
    return top_changes(batches(reference), batches(other), fp16_error)


def graphed_items_per_s(model, ids, mask, count=30):
    compiled = torch.compile(model)
    with torch.inference_mode():
        graph = capture(lambda: compiled(ids, mask))
        return len(ids) / seconds_per_replay(graph, count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dense-tflops", type=float, default=989.0, help="the card's fp16 dense rate (H200: 989)")
    args = parser.parse_args()
    torch.manual_seed(0)
    reference = DebertaLargeModel().cuda().eval()
    half = copy.deepcopy(reference).half()
    gen = torch.Generator(device="cuda").manual_seed(1)
    batches = [(torch.randint(0, 30000, (8, 64), device="cuda", generator=gen),
                torch.ones(8, 64, dtype=torch.long, device="cuda")) for _ in range(9)]
    want, fp16 = logits(reference, batches), logits(half, batches)
    fp16_error = float((fp16 - want).abs().max())
    bound = ERROR_FACTOR * max(fp16_error, 1e-3)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}: random-weight DeBERTa-large caption model, {len(want)} rows of 64 tokens; "
          f"fp16 max abs error to fp32 {fp16_error:.3g} (gate bound {bound:.3g}); logits range "
          f"{float(want.min()):.3g}..{float(want.max()):.3g}")
    within = []
    for label, pattern in {"all": None, **GROUPS}.items():
        model = copy.deepcopy(half)
        names = quantise_linear_layers(model, re.compile(pattern) if pattern else None)
        got = logits(model, batches)
        error, flips = float((got - want).abs().max()), changed(want, got, fp16_error)
        ok = error <= bound and flips == 0
        within += [pattern] if ok and pattern else []
        print(f"fp8 {label}: {len(names)} layers, max abs error {error:.3g} ({error / fp16_error:.0f} x fp16), "
              f"top row changed in {flips} of {len(batches)} batches: {'within' if ok else 'outside'} the gate")
    ids = torch.randint(0, 30000, (args.batch, args.tokens), device="cuda", generator=gen)
    mask = torch.ones_like(ids)
    flops = 2 * sum(p.numel() for n, p in reference.named_parameters() if "embeddings" not in n) * ids.numel()
    limit = args.dense_tflops * 1e12 / flops * args.batch  # items/s
    variants = {"fp16": None, "fp8 all": ".", **({"fp8 within the gate": "|".join(within)} if within else {})}
    fp16_rate = None
    for label, pattern in variants.items():
        model = copy.deepcopy(half)
        if pattern:
            quantise_linear_layers(model, re.compile(pattern))
        rate = graphed_items_per_s(model, ids, mask)
        fp16_rate = fp16_rate or rate
        print(f"{label}: {rate:,.0f} items/s at [{args.batch}, {args.tokens}] (compiled, CUDA graph), "
              f"{rate / fp16_rate:.2f} x fp16, {rate / limit:.2f} of the fp16 dense limit "
              f"({limit:,.0f} items/s, linear-layer FLOPs only)")
        del model
        torch.compiler.reset()


if __name__ == "__main__":
    main()
