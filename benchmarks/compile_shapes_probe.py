"""Does compiling for one static shape beat one dynamic-shape compile, once both replay a CUDA graph?

`python_compiled` compiles each model once with dynamic shapes and captures one CUDA graph per
bucket. The issue's best raw column was `torch.compile` of a static shape. This probe measures the
two on the same exported E5-size program (BERT 12x384, random weights, fp16, seq 128), each
bucket replayed as a CUDA graph, plus Inductor's max-autotune for the static case.

    python3 -m benchmarks.compile_shapes_probe [--batches 8,64,256] [--seconds 3] [--autotune]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch


def e5_program(device: str):
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536)
    model = BertModel(config).eval().half().to(device)

    class Core(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = model

        def forward(self, input_ids, attention_mask):
            states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
            return torch.nn.functional.normalize(pooled.float(), dim=-1)

    ids = torch.randint(1000, 2000, (4, 128), device=device)
    mask = torch.ones_like(ids)
    batch, seq = torch.export.Dim("batch", min=1, max=512), torch.export.Dim("seq", min=1, max=512)
    return torch.export.export(Core(), (ids, mask), dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq})).module()


def graphed(call, batch: int, device: str):
    ids = torch.randint(1000, 2000, (batch, 128), device=device)
    mask = torch.ones_like(ids)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(3):
            call(ids, mask)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        call(ids, mask)
    return graph


def rate(graph, batch: int, seconds: float) -> float:
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
        count += 10
    return count * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="8,64,256")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--autotune", action="store_true", help="also the static shape with max-autotune (minutes)")
    args = parser.parse_args()
    device = "cuda"
    program = e5_program(device)
    variants = {
        "dynamic (python_compiled today)": lambda: torch.compile(copy.deepcopy(program), dynamic=True),
        "static shape": lambda: torch.compile(copy.deepcopy(program), dynamic=False),
    }
    if args.autotune:
        variants["static, max-autotune"] = lambda: torch.compile(copy.deepcopy(program), dynamic=False,
                                                                  mode="max-autotune-no-cudagraphs")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; E5-size BERT fp16, seq 128, CUDA graph "
          "replays, sequences/s")
    for batch in [int(b) for b in args.batches.split(",")]:
        row = []
        for name, make in variants.items():
            torch._dynamo.reset()
            started = time.perf_counter()
            graph = graphed(make(), batch, device)
            compile_s = time.perf_counter() - started
            row.append(f"{name}: {rate(graph, batch, args.seconds):,.0f} ({compile_s:.0f} s to compile)")
        print(f"batch {batch}: " + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()
