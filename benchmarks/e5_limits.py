"""E5's raw paths on one GPU, for the served figures to be compared with: eager fp16,
torch.compile, and torch.compile with CUDA graphs (mode="reduce-overhead"), at one batch size and
seq 128, plus the model's fp16 limit (FLOPs per sequence, from its config, over the GPU's dense
fp16 peak). `python -m benchmarks.e5_limits CHECKPOINT_DIR [--batch 256] [--peak-tflops 989]`
prints one JSON line. The peak default is the H100 SXM's dense fp16 tensor rate."""
import argparse
import json
import time

import torch

from triton_models.e5_small_v2.model_script import E5Embedder


def flops_per_sequence(config, seq: int) -> float:
    """Matrix multiplies of a BERT encoder: the Q, K, V, output and two MLP projections per token,
    and the attention scores and weighted sum per head (2 FLOPs per multiply-add)."""
    d, layers, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    projections = 2 * seq * (4 * d * d + 2 * d * inner)
    attention = 2 * 2 * seq * seq * d
    return float(layers * (projections + attention))


def throughput(call, ids, mask, seconds: float = 3.0) -> float:
    for _ in range(5):
        call(ids, mask)
    torch.cuda.synchronize()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call(ids, mask)
        done += 1
    torch.cuda.synchronize()
    return done * ids.shape[0] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    model = E5Embedder.from_folder(args.checkpoint).cuda().half().eval()
    ids = torch.randint(1000, 2000, (args.batch, args.seq), device="cuda")
    mask = torch.ones_like(ids)
    figures = {"gpu": torch.cuda.get_device_name(0), "batch": args.batch, "seq": args.seq}
    with torch.inference_mode():
        figures["eager"] = throughput(model, ids, mask)
        figures["compiled"] = throughput(torch.compile(model), ids, mask)
        figures["compiled_cuda_graphs"] = throughput(torch.compile(model, mode="reduce-overhead"), ids, mask)
    flops = flops_per_sequence(model.encoder.config, args.seq)
    figures["gflop_per_sequence"] = flops / 1e9
    figures["fp16_limit"] = args.peak_tflops * 1e12 / flops
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
