"""A callable captured as one CUDA graph and the time of its replays: the GPU probes' common measure."""
from __future__ import annotations

import contextlib
import time

import torch


def capture(fn, warmups: int = 3, context=contextlib.nullcontext) -> torch.cuda.CUDAGraph:
    """`fn` run `warmups` times on a side stream (compiles, cuBLAS handles), then captured; `context`
    a factory of the context manager each run needs (for example an attention-backend choice)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), context():
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with context(), torch.cuda.graph(graph):
        fn()
    return graph


def seconds_per_replay(graph: torch.cuda.CUDAGraph, count: int) -> float:
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(count):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / count
