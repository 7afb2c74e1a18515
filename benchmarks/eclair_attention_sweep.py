"""The decode-attention kernel's tilings on this GPU: for each batch, the cross-attention over the
encoder tokens and the self-attention over a half-full cache, at every (keys per iteration, warps,
pipeline stages, programs per SM) in the grid, as 10 layers replayed in one CUDA graph. Prints
microseconds per call, bytes read per second and the fraction of the card's HBM bandwidth: the
tiling `launch_for` picks, then the best five.

    python3 benchmarks/eclair_attention_sweep.py [--batches 1,16,64] [--hbm-tbps 4.8]
        [--blocks 32,64,128] [--warps 1,2,4,8] [--stages 1,2,3] [--per-sm 2,4,8]
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.graph_timing import capture, seconds_per_replay  # noqa: E402
from triton_models.eclair import decode_attention as da  # noqa: E402

LAYERS, HEADS, DIM, ENCODER_TOKENS, CACHE = 10, 16, 64, 1280, 512  # ECLAIR's decoder, 512 new tokens


def replay_us(calls, count: int = 50) -> float:
    """Microseconds per call of `calls` (a list of thunks) captured as one graph."""
    graph = capture(lambda: [call() for call in calls], warmups=1)
    return seconds_per_replay(graph, count) / len(calls) * 1e6


def sweep_arguments(extra=None) -> tuple[argparse.Namespace, int]:
    """The sweeps' command line (--batches, --hbm-tbps; `extra(parser)` adds more) and this GPU's SM count."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--hbm-tbps", type=float, default=4.8, help="the card's HBM bandwidth (H200: 4.8)")
    if extra:
        extra(parser)
    args = parser.parse_args()
    args.batches = [int(x) for x in args.batches.split(",")]
    return args, torch.cuda.get_device_properties(0).multi_processor_count


def main() -> None:
    def grid_arguments(parser):
        for name, default in (("blocks", "32,64,128"), ("warps", "1,2,4,8"), ("stages", "1,2,3"), ("per-sm", "2,4,8")):
            parser.add_argument(f"--{name}", default=default, help=f"the grid's {name} (default {default})")
    args, sms = sweep_arguments(grid_arguments)
    batches, hbm_tbps = args.batches, args.hbm_tbps
    axes = [[int(x) for x in value.split(",")] for value in (args.blocks, args.warps, args.stages, args.per_sm)]
    grid = [da.Launch(*tiling) for tiling in itertools.product(*axes)]
    print(f"{torch.cuda.get_device_name(0)}, {sms} SMs; q [B, {HEADS}, {DIM}] fp16; cross K/V [B, {HEADS}, "
          f"{ENCODER_TOKENS}, {DIM}]; self K/V [B, {HEADS}, {CACHE}, {DIM}] at position {CACHE // 2}; "
          f"{LAYERS} layers per graph")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for b in batches:
        q = torch.randn(b, HEADS, DIM, device="cuda", generator=gen).half()
        counters = torch.zeros(b * HEADS, device="cuda", dtype=torch.int32)
        lengths = torch.full((b,), CACHE // 2, device="cuda")
        for form, keys in (("cross", ENCODER_TOKENS), ("self", CACHE)):
            k, v = (torch.randn(LAYERS, b, HEADS, keys, DIM, device="cuda", generator=gen).half() for _ in range(2))
            new = torch.randn(b, HEADS, DIM, device="cuda", generator=gen).half()
            read = 2 * b * HEADS * (keys if form == "cross" else CACHE // 2 + 1) * DIM * 2
            extra = (lengths, 1, new, new) if form == "self" else ()
            results = []
            for launch in grid:
                calls = [lambda i=i: da.decode_attention(q, k[i], v[i], 0.125, launch.per_sm * sms, *extra,
                                                         counters=counters, launch=launch) for i in range(LAYERS)]
                try:
                    results.append((replay_us(calls), launch))
                except Exception as error:  # noqa: BLE001 - a tiling that does not compile is reported, not fatal
                    print(f"batch {b} {form}: {launch} failed: {type(error).__name__}")
            results.sort(key=lambda r: r[0])
            picked = da.launch_for(b * HEADS, form == "self")
            default = next((r for r in results if r[1] == picked), None) or (replay_us(
                [lambda i=i: da.decode_attention(q, k[i], v[i], 0.125, picked.per_sm * sms, *extra, counters=counters,
                                                 launch=picked) for i in range(LAYERS)]), picked)

            def line(r, label):
                fraction = read / (r[0] * 1e-6) / (hbm_tbps * 1e12)
                return (f"batch {b} {form} {label}: {r[0]:.1f} us/call, {read / 2**20:.1f} MiB read, "
                        f"{fraction:.2f} of HBM; block {r[1].block}, {r[1].warps} warps, {r[1].stages} stages, "
                        f"{r[1].per_sm} programs/SM")
            print(line(default, "picked"))
            for rank, r in enumerate(results[:5]):
                print(line(r, f"best #{rank + 1}"))
            del k, v


if __name__ == "__main__":
    main()
