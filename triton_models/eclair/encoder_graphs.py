"""ECLAIR's vision encoder as CUDA graphs: one per batch bucket, compiled first where asked.

`graph_decoder.SlotDecoder` owns one `EncoderGraphs` and encodes its pages through it: replayed
graphs once captured, the eager encoder until then (always, on a CPU).
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class EncoderGraphs:
    """An encoder ([B, *page] pixels -> [B, *states] encoder states) run as one CUDA graph per batch
    bucket once `capture`d, eager until then. The encoder function is passed to each call, never
    kept: a reference back to its decoder would make a cycle, and a dropped decoder's KV cache and
    graphs would then stay allocated until the garbage collector ran (when `reserve` reallocates,
    the old decoder's memory must be free at once). `attention_context()` is the attention-kernel
    context that capture runs under (the caller runs replays under it too)."""

    def __init__(self, page: tuple[int, ...], states: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                 attention_context):
        self.page, self.states, self.device, self.dtype = page, states, device, dtype
        self.attention_context = attention_context
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.compiled = False
        self.enc_in: torch.Tensor | None = None  # the captured graphs' input and output, once captured
        self.enc_out: torch.Tensor | None = None

    @property
    def mode(self) -> str:
        """How the vision encoder runs, for the load log."""
        how = "compiled and captured" if self.compiled else "captured"
        return f"{how} for {', '.join(map(str, sorted(self.graphs)))} pages" if self.graphs else "eager"

    def __call__(self, pixels: torch.Tensor, encode_eager) -> torch.Tensor:
        """[B, *page] pixels on the device, in its dtype -> [B, *states]: through the smallest
        captured bucket holding each chunk of at most the largest bucket's pages; `encode_eager`
        without graphs."""
        if not self.graphs:
            return encode_eager(pixels)
        sizes, parts = sorted(self.graphs), []
        for chunk in pixels.split(sizes[-1]):
            size = next(s for s in sizes if s >= len(chunk))
            self.enc_in[:len(chunk)].copy_(chunk)
            self.graphs[size].replay()
            parts.append(self.enc_out[:len(chunk)].clone())
        return torch.cat(parts)

    def capture(self, encode_eager, sizes: list[int], compiled: bool, pool=None) -> None:
        """`encode_eager` captured per bucket, `compiled` first (one static shape a bucket: Inductor
        fuses Swin's norms, rolls and window reshapes; Dynamo's 8 entries hold the 1-2 decoders a
        process builds); where that fails, captured uncompiled (states off the build's by fp16
        rounding), else eager."""
        self.enc_in = torch.zeros(sizes[-1], *self.page, device=self.device, dtype=self.dtype)
        self.enc_out = torch.empty(sizes[-1], *self.states, device=self.device, dtype=self.dtype)
        self.graphs, self.compiled = {}, False
        encode = torch.compile(encode_eager, dynamic=False) if compiled else encode_eager
        try:
            for size in reversed(sizes):
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side), self.attention_context():  # compiles this bucket's shape, then warms up
                    for _ in range(2 if compiled else 1):
                        self.enc_out[:size].copy_(encode(self.enc_in[:size]))
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with self.attention_context(), torch.cuda.graph(graph, pool=pool):
                    self.enc_out[:size].copy_(encode(self.enc_in[:size]))
                self.graphs[size] = graph
            self.compiled = compiled
        except Exception as error:  # noqa: BLE001 - an encoder that does not compile or capture runs without
            self.graphs = {}
            if compiled:
                log.warning("ECLAIR encoder: compiled, it did not run or capture (%s); captured uncompiled", error)
                return self.capture(encode_eager, sizes, False, pool)
            log.warning("ECLAIR encoder left eager: CUDA graph capture failed (%s)", error)
