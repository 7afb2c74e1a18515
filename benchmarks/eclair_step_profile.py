"""Where a SlotDecoder step's time goes on a GPU: kernel time per step (torch.profiler on the eager
step), the step replayed as a CUDA graph, and the same step compiled by torch.compile (inductor) then
captured, at a few batches, on the real-size random-weight ECLAIR of benchmarks.eclair_decoder_probe.

    python3 benchmarks/eclair_step_profile.py [--batches 1,16,64] [--new-tokens 128] [--compile]

The attention kernel's tilings and programs per SM: benchmarks/eclair_attention_sweep.py.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.eclair_decoder_probe import EOS, PAD, START, build  # noqa: E402
from benchmarks.graph_timing import capture, seconds_per_replay  # noqa: E402
from triton_models.eclair.graph_decoder import SlotDecoder, attention_kernels  # noqa: E402
from triton_models.eclair.runtime import TokenIds  # noqa: E402


def captured(fn):
    return capture(fn, context=lambda: attention_kernels(torch.device("cuda")))


def ms_per_replay(graph, count: int = 200) -> float:
    return seconds_per_replay(graph, count) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    model = build(SimpleNamespace(vocab=50000, layers=10, seed=0, gain=2.0, device="cuda"))
    decoder = SlotDecoder(model, max(batches), args.new_tokens, TokenIds(START, PAD, EOS), "cuda", torch.float16,
                          use_graphs=False, compile_encoder=False)
    states = torch.randn(max(batches), decoder.encoder_tokens, decoder.d_model, device="cuda", dtype=torch.float16)
    decoder.admit(list(range(max(batches))), states)
    with torch.inference_mode():
        decoder.pos.fill_(args.new_tokens // 2)
        for b in batches:
            eager = captured(lambda: decoder._step(b))
            line = f"batch {b}: graph {ms_per_replay(eager):.3f} ms/step"
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof, \
                    attention_kernels(torch.device("cuda")):
                for _ in range(10):
                    decoder._step(b)
                torch.cuda.synchronize()
            events = [e for e in prof.key_averages() if e.device_time_total > 0]
            kernels = sum(e.count for e in events) / 10
            busy = sum(e.device_time_total for e in events) / 10 / 1e3
            print(f"{line}; eager kernels/step {kernels:.0f}, kernel time/step {busy:.3f} ms")
            print(prof.key_averages().table(sort_by="device_time_total", row_limit=args.top, max_name_column_width=70))
            if args.compile:
                start = time.perf_counter()
                compiled = torch.compile(lambda: decoder._step(b), dynamic=False)
                graph = captured(compiled)
                print(f"batch {b}: compiled+graph {ms_per_replay(graph):.3f} ms/step "
                      f"(compile {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
