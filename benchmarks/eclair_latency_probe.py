"""The latency of a short ECLAIR request alone, and while long pages are in flight (in-flight
batching answers it as soon as its own page is done). Against a running stack:

    python3 -m benchmarks.eclair_latency_probe ENV_FILE [--long-pages 64] [--long-tokens 512] [--short-tokens 32]

Prints p50 of 5 one-page requests (`--short-tokens` new tokens) alone, then the same while
`--long-pages` one-page requests of `--long-tokens` run, and the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

from scripts.bench.eclair import bench_pages
from scripts.stack_settings import load_settings


def call(url: str, page, limit: int) -> float:
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    tensor = grpc.InferInput("image", [1, *page.shape], "UINT8")
    tensor.set_data_from_numpy(page[None])
    started = time.monotonic()
    client.infer("eclair", [tensor], parameters={"max_new_tokens": limit}, client_timeout=900)
    client.close()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("env_file", type=Path)
    parser.add_argument("--long-pages", type=int, default=64)
    parser.add_argument("--long-tokens", type=int, default=512)
    parser.add_argument("--short-tokens", type=int, default=32)
    args = parser.parse_args()
    settings = load_settings(args.env_file, Path("."))
    url = f"127.0.0.1:{settings['TRITON_GRPC_PORT']}"
    pages = bench_pages(args.long_pages + 1, seed=7)
    alone = [call(url, pages[0], args.short_tokens) for _ in range(6)][1:]  # the first warms up
    threads = [threading.Thread(target=call, args=(url, page, args.long_tokens)) for page in pages[1:]]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the long pages admitted and decoding
    busy = [call(url, pages[0], args.short_tokens) for _ in range(5)]
    still = sum(t.is_alive() for t in threads)
    for thread in threads:
        thread.join()
    print(f"1 page, {args.short_tokens} new tokens, {settings['ECLAIR_BATCH_SIZE']} slots: p50 alone "
          f"{statistics.median(alone) * 1000:.0f} ms; while {args.long_pages} pages of {args.long_tokens} tokens were "
          f"in flight ({still} still running after the last short one) {statistics.median(busy) * 1000:.0f} ms; "
          f"ratio {statistics.median(busy) / statistics.median(alone):.2f}")


if __name__ == "__main__":
    main()
