"""Where E5's time goes, and what FP8 could gain there, on a GPU: the E5 core as served
(triton_models/e5_small_v2: BERT, mean pooling, L2 norm) in fp16 and with every linear layer in FP8
(converters/fp8.py's row-wise layers; and per-tensor with static input scales, benchmarks/fp8_probe.py's
fastest way; a PRECISION=fp8 build keeps E5 in fp16), each exported, compiled and replayed as a CUDA
graph as the served path runs it: items/s, the fraction of the fp16 dense limit ("linear-layer
FLOPs": 2 per non-embedding weight a token, the norms' few included), the min cosine to fp32 over 64 rows (the gate's bound: 0.999), and
the kernel time of a forward split into GEMMs, Triton's fused kernels and the rest; first, the
linear layers' fp16 GEMMs alone, back to back, as a yardstick.

    python3 benchmarks/fp8_e5_probe.py [--checkpoint FOLDER] [--batch 256] [--tokens 128] [--device cuda]

Without --checkpoint the model is the random-weight e5-small-v2-sized BERT (12 x 384) of
benchmarks/make_gpu_checkpoints.py. On CPU (--device cpu) only the cosines are measured.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.graph_timing import capture, seconds_per_replay  # noqa: E402
from benchmarks.fp8_probe import graphed_items_per_s, kernel_split, quantise_static  # noqa: E402
from converters.fp8 import MIN_COSINE, quantise_linear_layers  # noqa: E402
from triton_models.e5_small_v2.model_script import E5Embedder  # noqa: E402


def random_e5() -> E5Embedder:
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)  # as benchmarks/make_gpu_checkpoints.py makes its e5 folder
    return E5Embedder(BertModel(BertConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                                           intermediate_size=1536), add_pooling_layer=False))


def embed(model, batches) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(ids, mask).float() for ids, mask in batches])


def linear_gemm_ms(model, ids, mask) -> float:
    """The linear layers' GEMMs of one forward alone, back to back (eager `F.linear` with bias, on the
    inputs each layer saw), replayed as one CUDA graph: what they cost outside the model."""
    with torch.inference_mode():
        calls = []  # (input rows, weight, bias) of each linear layer as the forward ran it
        hooks = [m.register_forward_hook(lambda m, args, out: calls.append((args[0].reshape(-1, args[0].shape[-1]),
                                                                             m.weight, m.bias)))
                 for m in model.modules() if isinstance(m, torch.nn.Linear)]
        model(ids, mask)
        for hook in hooks:
            hook.remove()
        graph = capture(lambda: [torch.nn.functional.linear(x, w, b) for x, w, b in calls])
        return seconds_per_replay(graph, 30) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, help="an e5 folder (config.json, model.safetensors)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dense-tflops", type=float, default=989.0, help="the card's fp16 dense rate (H200: 989)")
    args = parser.parse_args()
    reference = (E5Embedder.from_folder(args.checkpoint) if args.checkpoint else random_e5()).float().to(args.device).eval()
    vocab = reference.encoder.config.vocab_size
    gen = torch.Generator(device=args.device).manual_seed(1)
    rows = lambda n, tokens: (torch.randint(0, vocab, (n, tokens), device=args.device, generator=gen),  # noqa: E731
                              torch.ones(n, tokens, dtype=torch.long, device=args.device))
    batches, calibration = [rows(8, 64) for _ in range(8)], [rows(8, 64) for _ in range(4)]
    want = embed(reference, batches)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    half = copy.deepcopy(reference).to(dtype)
    variants = {"fp16" if dtype == torch.float16 else "fp32": lambda m: 0,
                "fp8 row-wise, converters/fp8.py": quantise_linear_layers,
                "fp8 per-tensor, static input scales": lambda m: quantise_static(m, calibration)}
    cosine = lambda got: float(torch.nn.functional.cosine_similarity(got, want, dim=-1).min())  # noqa: E731
    ids, mask = rows(args.batch, args.tokens)
    flops = 2 * sum(p.numel() for n, p in reference.named_parameters() if "embeddings" not in n) * ids.numel()
    limit = args.dense_tflops * 1e12 / flops * args.batch
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}: E5 "
          f"({'random weights' if not args.checkpoint else args.checkpoint.name}), cosines over {len(want)} rows of "
          f"64 tokens" + (f", timing at [{args.batch}, {args.tokens}]; fp16 dense limit {limit:,.0f} items/s (linear-layer "
                        "FLOPs only)" if args.device == "cuda" else " (no timing on CPU)"))
    if args.device == "cuda":
        print(f"the linear layers' fp16 GEMMs alone: {linear_gemm_ms(half, ids, mask):.2f} ms a forward")
    base = None
    for label, quantise in variants.items():
        model = copy.deepcopy(half)
        quantise(model)
        line = f"{label}: min cosine to fp32 {cosine(embed(model, batches)):.5f} (bound {MIN_COSINE})"
        if args.device == "cuda":
            rate, compiled = graphed_items_per_s(model, ids, mask)
            base = base or rate
            line += (f"; {rate:,.0f} items/s (exported, compiled, CUDA graph), {rate / base:.2f} x fp16, "
                     f"{rate / limit:.2f} of the fp16 dense limit\n  {kernel_split(compiled, ids, mask)}")
            torch.compiler.reset()
        print(line)


if __name__ == "__main__":
    main()
