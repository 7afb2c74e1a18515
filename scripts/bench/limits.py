"""A model's fp16 limit on this GPU: items per second if every multiply ran at the card's dense
fp16 tensor-core peak. FLOPs per item are counted by PyTorch's FLOP counter on the exported
program itself (one item of the golden inputs), so the figure follows the model's real config."""
from __future__ import annotations

# Dense fp16 tensor-core peak (TFLOPS, without sparsity) by the name nvidia-smi reports, from
# NVIDIA's data sheets; the first matching fragment wins (PCIe before the SXM default).
PEAK_FP16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A10G", 125.0), ("A10", 125.0), ("L40S", 362.0), ("L4", 121.0),
)


def peak_fp16_tflops(device_name: str) -> float | None:
    return next((peak for fragment, peak in PEAK_FP16_TFLOPS if fragment in device_name), None)


def flops_per_item(module, args) -> float:
    """FLOPs of one call on a batch of one (`args`: tensors with batch 1)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(*args)
    return float(counter.get_total_flops())


def fp16_limit(flops: float | None, device_name: str) -> float | None:
    """Items per second at the card's fp16 peak; None where either is unknown."""
    peak = peak_fp16_tflops(device_name)
    return peak * 1e12 / flops if peak and flops else None
