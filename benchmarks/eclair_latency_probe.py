"""The latency of a short ECLAIR request alone, and while long pages are in flight (in-flight
batching answers it as soon as its own page is done). Against a running stack:

    python3 -m benchmarks.eclair_latency_probe ENV_FILE [--long-pages 64] [--spare-pages 16] [--long-tokens 512]
        [--short-tokens 32]

Prints p50 of 5 one-page requests (`--short-tokens` new tokens) alone, then of those sent while at
least `--long-pages` one-page requests of at most `--long-tokens` were in flight (sent, not yet
answered), and the ratio. A random-weight page may reach EOS sooner, so `--spare-pages` more long requests are sent
(the stack needs slots for all of them and the short one).
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
    parser.add_argument("--spare-pages", type=int, default=16, help="long pages sent beyond --long-pages")
    parser.add_argument("--long-tokens", type=int, default=512)
    parser.add_argument("--short-tokens", type=int, default=32)
    parser.add_argument("--short-requests", type=int, default=5)
    parser.add_argument("--wait-s", type=float, default=0.3, help="after sending the long pages, before the short ones")
    args = parser.parse_args()
    settings = load_settings(args.env_file, Path("."))
    url = f"127.0.0.1:{settings['TRITON_GRPC_PORT']}"
    long_count = args.long_pages + args.spare_pages
    if long_count + 1 > int(settings["ECLAIR_BATCH_SIZE"]):
        parser.error(f"{long_count} long pages and the short one need ECLAIR_BATCH_SIZE >= {long_count + 1}, "
                     f"got {settings['ECLAIR_BATCH_SIZE']}")
    pages = bench_pages(long_count + 1, seed=7)
    alone = [call(url, pages[0], args.short_tokens) for _ in range(6)][1:]  # the first warms up
    threads = [threading.Thread(target=call, args=(url, page, args.long_tokens)) for page in pages[1:]]
    for thread in threads:
        thread.start()
    time.sleep(args.wait_s)  # the long pages admitted and decoding
    busy = []  # (seconds, long pages running when it was sent, and when it was answered)
    for _ in range(args.short_requests):
        sent = sum(t.is_alive() for t in threads)
        busy.append((call(url, pages[0], args.short_tokens), sent, sum(t.is_alive() for t in threads)))
    for thread in threads:
        thread.join()
    # counted by when it was sent, not answered: a slow answer must not drop out of its own sample
    during = [seconds for seconds, sent, _ in busy if sent >= args.long_pages]
    line = (f"1 page {list(pages[0].shape)}, {args.short_tokens} new tokens, {settings['ECLAIR_BATCH_SIZE']} slots: p50 alone "
            f"{statistics.median(alone) * 1000:.0f} ms; {len(during)} of {len(busy)} sent while at least "
            f"{args.long_pages} of {long_count} pages of at most {args.long_tokens} tokens were in flight")
    if during:
        line += (f": p50 {statistics.median(during) * 1000:.0f} ms, ratio "
                 f"{statistics.median(during) / statistics.median(alone):.2f}")
    print(line + f" (all: {[round(s * 1000) for s, _, _ in busy]} ms; long pages running when each was sent "
                 f"{[sent for _, sent, _ in busy]}, when answered {[done for _, _, done in busy]})")


if __name__ == "__main__":
    main()
